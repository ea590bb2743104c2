"""The image cache: every image of a split decoded once, centre-square cropped and resized into one uint8 memmap.

Layout: `images_<split>_<fingerprint>_<size>.npy`, a `[n_images, size, size, 3]` uint8 RGB array (NHWC: permuted to
NCHW on the GPU it is channels_last for free), and `images_<split>_<fingerprint>_<size>.json` beside it holding what
the pixels depend on; the fingerprint (`CaptionedSplit.fingerprint`) keeps other data's same-named splits apart.
Both paths decode the same way: the full-resolution image turned upright as its EXIF orientation says (as it is
shown and captioned), its central square (the region a centre crop keeps),
resized with an antialiased bilinear filter. On a GPU the JPEGs are decoded by nvJPEG in batches; otherwise by PIL in
a process pool. Bound: the two agree within 1 grey level of mean absolute difference per image (the photo-like JPEGs
of tests/test_image_cache.py: <= 0.16 with the GPU path's code run on the CPU, <= 0.62 with nvJPEG on an H200, whose
chroma upsampling differs from libjpeg's). PIL's draft mode (libjpeg's 1/2-1/8 DCT-domain scaling, for images with a
short side >= 2 x size) broke that bound, by up to 2.7 grey levels at 256 px and 5.4 at 72 px on those JPEGs, to gain
a few % of CPU build speed on COCO's mix of sizes: it is not used.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from clip_lab.data.split import CaptionedSplit
from clip_lab.errors import ClipLabError
from clip_lab.files import atomic_path, save_json

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # bump when the layout or the resizing changes (2: full decode, no draft; 3: EXIF upright)
CHUNK = 256  # images per decode batch / pool task


def image_cache_paths(cache_dir: str | Path, split: CaptionedSplit, size: int) -> tuple[Path, Path]:
    """(pixels `.npy`, metadata `.json`) of a split's cache at `size`, named by the split and its data's fingerprint."""
    return split.cache_file(cache_dir, "images", size, suffix=".npy"), split.cache_file(
        cache_dir, "images", size, suffix=".json"
    )


def image_ref(cache_dir: str | Path, split: CaptionedSplit, size: int, i: int) -> dict[str, Any]:
    """Where a result finds image `i` of `split` again for a picture: its file, through the split's own records, and
    its row of the image cache (what the model saw) for when the file is gone or never existed on disk."""
    return {
        "file": str(split.image_path(i)),
        "image_cache": str(image_cache_paths(cache_dir, split, size)[0]),
        "cache_row": int(i),
    }


def expected_meta(split: CaptionedSplit, size: int) -> dict[str, Any]:
    """Everything the cached pixels depend on; a cache whose metadata differs is stale and gets rebuilt."""
    return {
        "version": CACHE_VERSION,
        "split": split.name,
        "fingerprint": split.fingerprint,
        "annotation_sha256": split.annotation_sha256,
        "image_list_sha256": hashlib.sha256("\n".join(split.file_names).encode()).hexdigest(),
        "n_images": len(split.file_names),
        "size": size,
        "layout": "NHWC uint8 RGB; full decode, EXIF-upright, central square, antialiased bilinear resize",
    }


def open_image_cache(cache_dir: str | Path, split: CaptionedSplit, size: int) -> np.ndarray | None:
    """The split's cache memory-mapped read-only if it matches the split and `size`; None (and why, logged) if not."""
    data, meta_file = image_cache_paths(cache_dir, split, size)
    if not (data.is_file() and meta_file.is_file()):
        return None
    try:
        stored = json.loads(meta_file.read_text())
    except (OSError, ValueError) as e:
        log.warning("image cache metadata %s is unreadable (%s); rebuilding the cache", meta_file, e)
        return None
    meta = expected_meta(split, size)
    diff = sorted(k for k in meta if stored.get(k) != meta[k])
    if diff:
        log.warning("image cache %s is stale (%s changed); rebuilding it", data, ", ".join(diff))
        return None
    try:
        images = np.load(data, mmap_mode="r")
    except (OSError, ValueError) as e:
        log.warning("image cache %s is unreadable (%s); rebuilding it", data, e)
        return None
    if images.shape != (meta["n_images"], size, size, 3) or images.dtype != np.uint8:
        log.warning(
            "image cache %s has shape %s, expected %s; rebuilding it",
            data,
            images.shape,
            (meta["n_images"], size, size, 3),
        )
        return None
    return images


ORIENTATION = 0x0112  # the EXIF tag of a camera's rotation


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of an encoded image, 1 when it has none or cannot be read (from its header only)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            value = img.getexif().get(ORIENTATION, 1)
    except Exception:  # not an image or a broken header: the decoder that follows names the problem
        return 1
    return value if value in range(1, 9) else 1


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A decoded `[C, H, W]` image turned upright as its EXIF orientation says (as PIL's `ImageOps.exif_transpose`):
    nvJPEG decodes the stored pixels as they are."""
    turn = {
        2: lambda x: x.flip(-1),
        3: lambda x: x.flip(-2, -1),
        4: lambda x: x.flip(-2),
        5: lambda x: x.transpose(-2, -1),
        6: lambda x: torch.rot90(x, -1, (-2, -1)),
        7: lambda x: x.transpose(-2, -1).flip(-2, -1),
        8: lambda x: torch.rot90(x, 1, (-2, -1)),
    }
    return turn[orientation](image) if orientation in turn else image


def decode_pil(path: str | Path | io.BytesIO, size: int) -> np.ndarray:
    """One image (a file, or its bytes) -> `[size, size, 3]` uint8: full decode, central square, antialiased bilinear
    resize (the CPU path)."""
    try:
        with Image.open(path) as img:
            # a full decode, as nvJPEG's: no img.draft, whose DCT-domain downscaling of large JPEGs is faster but moves
            # their pixels off the GPU path's by more than the 1 grey level (mean per image) the docstring promises
            return square_pil(img, size)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ClipLabError(
            f"cannot decode image {path} ({type(e).__name__}: {e}); replace it with the "
            "official file or remove its entry from the captions json"
        ) from e


def square_pil(img: Image.Image, size: int) -> np.ndarray:
    """A PIL image -> `[size, size, 3]` uint8 as the image cache stores it: upright as the camera's EXIF orientation
    says (as the image is shown, and captioned), RGB, its central square resized with an antialiased bilinear filter."""
    img = ImageOps.exif_transpose(img).convert("RGB")
    w, h = img.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    # crop first: resize(box=...) would let the filter reach past the square, unlike the GPU path
    return np.asarray(img.crop(box).resize((size, size), Image.Resampling.BILINEAR))


def build_image_cache(
    cache_dir: str | Path,
    split: CaptionedSplit,
    size: int,
    device: str | torch.device = "cpu",
    workers: int = 8,
    max_bad: float = 0.01,
) -> np.ndarray:
    """Decode every image of `split` into the cache (atomically) and return it memory-mapped read-only.

    Unreadable or absent images are skipped (their rows stay black), listed under `bad_images` in the metadata and
    summed up in one log line; more than `max_bad` of the split unreadable stops the build (nothing is kept).
    """
    data, meta_file = image_cache_paths(cache_dir, split, size)
    meta = expected_meta(split, size)
    files = [str(split.image_path(i)) for i in range(len(split.file_names))]
    device = torch.device(device)
    t0 = time.perf_counter()
    with atomic_path(data) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3))
        del out  # each writer opens its own view of the file; this one only sized it
        with _progress(len(files), f"image cache {split.name} ({size}px, {device.type})") as bar:
            if device.type == "cuda":
                bad = _fill_gpu(tmp, files, size, device, bar, readers=max(1, workers))
            else:
                bad = _fill_cpu(tmp, files, size, bar, workers=max(1, min(workers, os.cpu_count() or 1)))
        meta["bad_images"] = [{"index": i, "file": files[i], "reason": reason} for i, reason in sorted(bad)]
        check_bad_images(meta, max_bad, data)
        meta_file.unlink(missing_ok=True)  # data and metadata are two renames: never leave old metadata on new pixels
    save_json(meta, meta_file)
    dt = time.perf_counter() - t0
    log.info("image cache %s: %d images in %.1f s (%.0f images/s)", data, len(files), dt, len(files) / max(dt, 1e-9))
    if bad:
        first = meta["bad_images"][0]
        log.warning(
            "image cache %s: %d of %d images unreadable or absent, skipped (listed in %s; first: %s: %s)",
            data,
            len(bad),
            len(files),
            meta_file,
            first["file"],
            first["reason"],
        )
    return np.load(data, mmap_mode="r")


def check_bad_images(meta: dict[str, Any], max_bad: float, where: str | Path) -> None:
    """Stop when more than `max_bad` (a fraction) of a split's images are unreadable: that is a broken download."""
    bad = meta.get("bad_images", [])
    if len(bad) > max_bad * meta["n_images"]:
        examples = "; ".join(f"{b['file']} ({b['reason']})" for b in bad[:3])
        raise ClipLabError(
            f"{len(bad)} of {meta['n_images']} images of {meta['split']} are unreadable or absent (more than "
            f"max_bad_images={max_bad:g} of the split), e.g. {examples}. Fix: re-download or re-extract the split, "
            f"or raise data.max_bad_images to train without them ({where})"
        )


def bad_image_indices(cache_dir: str | Path, split: CaptionedSplit, size: int) -> np.ndarray:
    """Indices of the images the split's cache skipped (unreadable or absent)."""
    _, meta_file = image_cache_paths(cache_dir, split, size)
    meta = json.loads(meta_file.read_text())
    return np.array([b["index"] for b in meta.get("bad_images", [])], dtype=np.int64)


def ensure_image_cache(
    cache_dir: str | Path,
    split: CaptionedSplit,
    size: int,
    device: str | torch.device = "cpu",
    workers: int = 8,
    max_bad: float = 0.01,
) -> np.ndarray:
    """The split's valid cache, memory-mapped; built first if it is missing or stale. Either way, more than
    `max_bad` of the split unreadable stops with a clear error."""
    images = open_image_cache(cache_dir, split, size)
    if images is None:
        return build_image_cache(cache_dir, split, size, device, workers, max_bad)
    _, meta_file = image_cache_paths(cache_dir, split, size)
    check_bad_images(json.loads(meta_file.read_text()), max_bad, meta_file)
    return images


def _progress(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=None, smoothing=0.1)


# -- CPU: a process pool, each worker decoding with PIL and writing its rows straight into the memmap --------------
_OUT: np.ndarray | None = None


def _pool_init(path: str) -> None:
    global _OUT
    _OUT = np.load(path, mmap_mode="r+")


def _pool_task(task: tuple[int, list[str], int]) -> tuple[int, list[tuple[int, str]]]:
    start, files, size = task
    bad = []
    for k, f in enumerate(files):
        try:
            _OUT[start + k] = decode_pil(f, size)
        except ClipLabError as e:
            bad.append((start + k, str(e.__cause__ or e)))
    return len(files), bad


def _fill_cpu(path: Path, files: list[str], size: int, bar: Any, workers: int) -> list[tuple[int, str]]:
    """Decode into the file at `path`; return the (index, reason) of each image that could not be read."""
    tasks = [(s, files[s : s + CHUNK], size) for s in range(0, len(files), CHUNK)]
    bad: list[tuple[int, str]] = []
    if workers == 1:
        _pool_init(str(path))
        results = map(_pool_task, tasks)
        for n, b in results:
            bar.update(n)
            bad += b
        return bad
    with multiprocessing.get_context().Pool(workers, initializer=_pool_init, initargs=(str(path),)) as pool:
        for n, b in pool.imap_unordered(_pool_task, tasks):
            bar.update(n)
            bad += b
    return bad


# -- GPU: threads read the files ahead, nvJPEG decodes a chunk at a time, resizing is batched by crop size, and a
#    writer thread puts each finished chunk into the file while the GPU decodes the next --------------------------
def _fill_gpu(
    path: Path, files: list[str], size: int, device: torch.device, bar: Any, readers: int
) -> list[tuple[int, str]]:
    from torchvision.io import ImageReadMode, decode_jpeg

    offset = np.load(path, mmap_mode="r").offset  # pixels start after the .npy header
    row_bytes = size * size * 3
    pinned = device.type == "cuda"
    buffers = [torch.empty((CHUNK, size, size, 3), dtype=torch.uint8, pin_memory=pinned) for _ in range(2)]
    n_pil = 0

    bad: list[tuple[int, str]] = []

    def read(chunk: list[str]) -> tuple[list[torch.Tensor], list[int]]:
        # an absent or empty file gives an empty buffer, which no decoder accepts: PIL then names the problem
        data = [Path(f).read_bytes() if Path(f).is_file() else b"" for f in chunk]
        raw = [
            torch.frombuffer(bytearray(d), dtype=torch.uint8) if d else torch.zeros(0, dtype=torch.uint8) for d in data
        ]
        return raw, [exif_orientation(d) for d in data]  # nvJPEG ignores EXIF: turned upright after decoding

    def decode(chunk: list[str], raw: list[torch.Tensor]) -> list[torch.Tensor | None]:
        try:
            return decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
        except (
            RuntimeError,
            ValueError,
        ):  # one image nvJPEG cannot take (CMYK, PNG named .jpg...) fails the whole batch
            decoded: list[torch.Tensor | None] = []
            for r in raw:
                try:
                    decoded.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=device))
                except (RuntimeError, ValueError):
                    decoded.append(None)  # PIL decodes it below
            return decoded

    chunks = [files[s : s + CHUNK] for s in range(0, len(files), CHUNK)]
    fd = os.open(path, os.O_WRONLY)
    try:
        with ThreadPoolExecutor(readers) as pool, ThreadPoolExecutor(1) as writer:
            pending = [pool.submit(read, c) for c in chunks[:2]]
            writes: list[Any] = [None, None]
            for i, chunk in enumerate(chunks):
                raw, orientations = pending.pop(0).result()
                if i + 2 < len(chunks):
                    pending.append(pool.submit(read, chunks[i + 2]))
                decoded = [None if img is None else orient(img, o) for img, o in zip(decode(chunk, raw), orientations)]
                squares = torch.empty((len(chunk), size, size, 3), dtype=torch.uint8, device=device)
                by_side: dict[int, list[int]] = {}
                for k, img in enumerate(decoded):
                    if img is None:
                        try:
                            squares[k] = torch.from_numpy(decode_pil(chunk[k], size)).to(device)
                            n_pil += 1
                        except ClipLabError as e:
                            squares[k] = 0
                            bad.append((i * CHUNK + k, str(e.__cause__ or e)))
                    else:
                        by_side.setdefault(min(img.shape[-2:]), []).append(k)
                for side, ks in by_side.items():  # COCO: nearly all 640x480 / 480x640 -> one group of 480x480
                    crops = torch.stack([_central_square(decoded[k], side) for k in ks]).float()
                    resized = F.interpolate(
                        crops, size=(size, size), mode="bilinear", antialias=True, align_corners=False
                    )
                    squares[ks] = resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
                slot = i % 2
                if writes[slot] is not None:
                    writes[slot].result()  # this pinned buffer's previous chunk is on disk
                host = buffers[slot][: len(chunk)]
                host.copy_(squares)
                writes[slot] = writer.submit(_pwrite, fd, host, offset + i * CHUNK * row_bytes)
                bar.update(len(chunk))
            for w in writes:
                if w is not None:
                    w.result()
    finally:
        os.close(fd)
    if n_pil:
        log.info("image cache: %d images nvJPEG could not decode were decoded by PIL", n_pil)
    return bad


def _pwrite(fd: int, data: torch.Tensor, offset: int) -> None:
    view = memoryview(data.numpy()).cast("B")
    while view:  # pwrite may write less than asked
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _central_square(img: torch.Tensor, side: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    top, left = (h - side) // 2, (w - side) // 2
    return img[:, top : top + side, left : left + side]
