"""Inference for the zeroshot, search, embed and serve jobs: a trained checkpoint or a pretrained model (`hf:...`,
`open_clip:...`) with its data settings, embeddings, galleries."""

from __future__ import annotations

import argparse
import hashlib
import inspect
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from clip_lab.data import caption_cache, datasets, image_cache
from clip_lab.data.augment import center_crop
from clip_lab.data.datamodule import RetrievalData
from clip_lab.data.feature_cache import ensure_feature_cache, feature_cache_path
from clip_lab.data.split import CaptionedSplit
from clip_lab.errors import ClipLabError
from clip_lab.files import atomic_path, load_cache, name_slug, save_torch, sha256_file
from clip_lab.models import pretrained
from clip_lab.models.pretrained import FrozenText, PretrainedModel, canonical
from clip_lab.models.text_towers import TextTower
from clip_lab.train.module import ClipLab

log = logging.getLogger(__name__)

GALLERY_VERSION = 1  # bump when what the image gallery cache stores changes
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# the datamodule settings inference needs: taken from the checkpoint, each overridable by the flag of the same name
DATA_FLAGS = {
    "dataset": str,
    "data_root": str,
    "cache_dir": str,
    "text_model": str,
    "max_length": int,
    "image_size": int,
    "cache_image_size": int,
    "max_bad_images": float,
}


CKPT_HELP = (
    "checkpoint of a fit run (results/<run>/checkpoints/best.ckpt), or a pretrained model: hf:<hub id or folder> "
    "(CLIP, SigLIP, BLIP, ALIGN) or open_clip:<arch>:<pretrained tag or file>"
)


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """--ckpt_path, --device, --batch_size, -c/--config, and one flag per data setting (default: the checkpoint's)."""
    parser.add_argument("--ckpt_path", required=True, help=CKPT_HELP)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--batch_size", type=int, default=256, help="images per forward pass")
    add_data_args(parser)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """-c/--config (a pretrained model's data settings) and one flag per data setting."""
    parser.add_argument(
        "-c",
        "--config",
        action="append",
        default=None,
        help="a pretrained model's data settings: the data section of fit configs, stacked in order (a trained "
        "checkpoint carries its own)",
    )
    group = parser.add_argument_group("data settings (default: those the checkpoint was trained with)")
    for name, kind in DATA_FLAGS.items():
        group.add_argument(f"--{name}", type=kind, default=None)


def config_settings(configs: Sequence[str] | None) -> dict[str, Any]:
    """The `data:` section of stacked fit configs (later files winning), as `baselines` reads them."""
    settings: dict[str, Any] = {}
    for config in configs or ():
        path = require_file(config, "config file", "pass a fit config, e.g. configs/coco.yaml")
        settings |= (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    return settings


def require_file(path: str | Path, what: str, fix: str) -> Path:
    """`path` as a Path if it is a file; otherwise one ClipLabError line naming it and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ClipLabError(f"{what} {path} does not exist; {fix}")
    return path


@dataclass
class Checkpoint:
    """A trained model (or a pretrained one) ready for inference, with its data settings: those it was trained with,
    or a pretrained model's configs, overridden by flags."""

    path: Path  # the .ckpt file, or the pretrained model's name
    sha256: str  # names and validates the caches derived from this checkpoint's weights
    model: ClipLab | PretrainedModel
    data: dict[str, Any]  # RetrievalData settings
    device: torch.device
    batch_size: int

    @property
    def pretrained(self) -> bool:
        return isinstance(self.model, PretrainedModel)

    @property
    def name(self) -> str:
        """The checkpoint file, or the pretrained model's name."""
        return self.model.name if self.pretrained else str(self.path)

    @property
    def run_dir(self) -> Path:
        """`results/<run>` for `results/<run>/checkpoints/x.ckpt`; the checkpoint's folder otherwise; for a pretrained
        model, `results/pretrained/<its name>`."""
        if self.pretrained:
            return Path("results") / "pretrained" / name_slug(self.model.name)
        parent = self.path.parent
        return parent.parent if parent.name == "checkpoints" else parent

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    @property
    def logit_scale(self) -> float:
        """The inverse temperature: zero-shot logits are `logit_scale * cosine` (+ `logit_bias`), as in training."""
        return self.model.zero_shot_scale()[0]

    @property
    def logit_bias(self) -> float | None:
        """The model's logit bias (SigLIP: class probabilities are sigmoids), or None (a softmax over classes)."""
        return self.model.zero_shot_scale()[1]


def load_checkpoint(args: argparse.Namespace) -> Checkpoint:
    """`open_checkpoint` of a job's `add_checkpoint_args` options."""
    return open_checkpoint(args.ckpt_path, args.device, args.batch_size, args.config, **data_flags(args))


def data_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The data settings given as flags (`add_data_args`)."""
    return {n: getattr(args, n) for n in DATA_FLAGS if getattr(args, n, None) is not None}


def open_checkpoint(
    ckpt_path: str | Path,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    config: Sequence[str] | None = None,
    **data: Any,
) -> Checkpoint:
    """The model of `ckpt_path` in eval mode on `device` (default: cuda when available), with its datamodule settings
    under the overrides in `data` (DATA_FLAGS). Only the weights are read: the optimizer state a best.ckpt leaves out
    is never needed.

    `ckpt_path` may instead name a pretrained model (`hf:...`, `open_clip:...`: `models.pretrained`): its own towers
    then embed images and texts, with the data settings of the fit configs in `config` (default: RetrievalData's).
    """
    unknown = set(data) - set(DATA_FLAGS)
    if unknown:
        raise ClipLabError(f"unknown data settings {sorted(unknown)}: the ones inference reads are {list(DATA_FLAGS)}")
    if batch_size < 1:
        raise ClipLabError(f"--batch_size must be at least 1, not {batch_size}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ClipLabError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if pretrained.is_pretrained_name(str(ckpt_path)):
        return open_pretrained(str(ckpt_path), device, batch_size, config_settings(config), data)
    if config:
        raise ClipLabError(
            f"{ckpt_path} carries its own data settings: --config is for a pretrained model (hf:..., open_clip:...); "
            "change one setting with its flag (e.g. --data_root)"
        )
    path = require_file(
        ckpt_path,
        "checkpoint",
        "pass a .ckpt written by `python -m clip_lab fit`, e.g. results/<run>/checkpoints/best.ckpt, "
        "or a pretrained model's name (hf:<id or folder>, open_clip:<arch>:<tag>)",
    )
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("datamodule_hyper_parameters")
        # weights=None, text_pretrained=False: the trained weights come from the checkpoint; never download
        # ImageNet or Hugging Face ones for nothing
        model = ClipLab.load_from_checkpoint(path, map_location=device, weights=None, text_pretrained=False)
    except ClipLabError:
        raise
    except Exception as e:  # truncated file, foreign pickle, another model's state dict: all the same to the user
        raise ClipLabError(
            f"cannot load {path} as a clip_lab checkpoint ({reason(e)}); pass a .ckpt written by "
            "`python -m clip_lab fit`"
        ) from e
    model.eval()
    model.to_fast_layout()
    data = settings({k: v for k, v in (stored or {}).items() if not k.startswith("_")}, data)
    if not 0 < data["image_size"] <= data["cache_image_size"]:
        raise ClipLabError(
            f"image_size {data['image_size']} must be positive and at most cache_image_size {data['cache_image_size']}"
        )
    return Checkpoint(path, sha256_file(path), model, data, device, batch_size)


def open_pretrained(
    name: str, device: torch.device, batch_size: int, configured: dict[str, Any], data: dict[str, Any]
) -> Checkpoint:
    """A pretrained model as a Checkpoint: its image tower embeds whole cached squares, its text tower (the data's
    `text_model`, set to it) the queries and captions; its caches are the feature and caption caches `baselines` and
    `fit` use."""
    text_model = data.get("text_model")
    if configured.get("text_encoder") is not None or (text_model and canonical(text_model) != canonical(name)):
        raise ClipLabError(f"{name} embeds texts with its own text tower: leave text_model and text_encoder unset")
    model = PretrainedModel(name).to(device).eval()
    data = settings(configured, data) | {"text_model": name, "text_encoder": None}
    # what it sees of a square, for model_view: all of it, or the central part its processor crops after resizing
    p, side = model.image.preprocessing, data["cache_image_size"]
    data["image_size"] = round(side * p.crop / p.resize) if p.crop and p.resize else side
    digest = hashlib.sha256(pretrained.fingerprint(name).encode()).hexdigest()
    return Checkpoint(Path(name), digest, model, data, device, batch_size)


def settings(base: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """RetrievalData's defaults under `base` (a checkpoint's stored settings, or configs) under the flags given."""
    defaults = {
        n: p.default for n, p in inspect.signature(RetrievalData).parameters.items() if p.default is not p.empty
    }
    return defaults | base | {n: v for n, v in flags.items() if v is not None}


def reason(e: BaseException | None) -> str:
    """`Type: first line of the message`, so an error stays one line."""
    if e is None:
        return "unknown error"
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def text_encoder(ckpt: Checkpoint) -> FrozenText | TextTower:
    """The text encoder that built the checkpoint's training targets, on the checkpoint's device: the one trained
    with it (in the checkpoint), or the frozen tower its data named (a pretrained model's own)."""
    if ckpt.model.text_tower is not None:
        return ckpt.model.text_tower
    encoder = pretrained.text_encoder(ckpt.data["text_model"], ckpt.data["max_length"]).to(ckpt.device)
    if encoder.dim != ckpt.embed_dim:
        raise ClipLabError(
            f"text model {ckpt.data['text_model']} embeds into {encoder.dim} dimensions, the "
            f"checkpoint's image tower into {ckpt.embed_dim}; pass the --text_model "
            "it was trained with"
        )
    return encoder


# -- images ------------------------------------------------------------------------------------------------------------
def list_images(path: str | Path) -> list[Path]:
    """One image file, or every image file under a folder (recursively, sorted); ClipLabError when there is none."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ClipLabError(f"no such image file or folder: {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ClipLabError(
            f"folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); pass a folder of "
            "images, one image file, or a split name"
        )
    return files


def read_image(path: str | Path, size: int) -> np.ndarray:
    """One image file -> `[size, size, 3]` uint8, decoded exactly as the image cache decodes it."""
    path = require_file(path, "image", "pass an existing JPEG or PNG file")
    try:
        return image_cache.decode_pil(path, size)
    except ClipLabError as e:  # decode_pil's fix speaks of COCO's captions json; this file is the user's own
        raise ClipLabError(f"cannot read image {path} ({reason(e.__cause__)}); pass a JPEG or PNG file") from e


def model_view(square: np.ndarray, image_size: int) -> np.ndarray:
    """The centre crop the model sees of one stored `[S, S, 3]` square, as `[image_size, image_size, 3]` for display."""
    return center_crop(torch.tensor(square)[None], image_size)[0].permute(1, 2, 0).numpy()


@torch.no_grad()
def embed_images(ckpt: Checkpoint, squares: np.ndarray, progress: bool = False) -> Tensor:
    """uint8 `[N, S, S, 3]` squares (as the image cache holds) -> float32 `[N, dim]` CPU embeddings: of centre crops
    for a trained model, of the whole squares through the family's preprocessing for a pretrained one."""
    cuda = ckpt.device.type == "cuda"
    starts = range(0, len(squares), ckpt.batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="embedding images", unit="batch", disable=None)
    out = [torch.empty(0, ckpt.embed_dim)]
    for s in starts:
        batch = torch.from_numpy(np.array(squares[s : s + ckpt.batch_size])).to(
            ckpt.device
        )  # a copy: memmaps are read-only
        with torch.autocast(ckpt.device.type, dtype=torch.bfloat16, enabled=cuda):  # the precision fit tests with
            out.append(ckpt.model.embed_squares(batch, ckpt.data["image_size"]).float().cpu())
    return torch.cat(out)


# -- splits and the image gallery --------------------------------------------------------------------------------------
def is_split(ckpt: Checkpoint, name: str) -> bool:
    """Whether `name` is a split name of the checkpoint's dataset (its files may still be missing)."""
    try:
        datasets.check_split_name(ckpt.data["dataset"], name)
    except ClipLabError:
        return False
    return True


def open_split(ckpt: Checkpoint, name: str) -> CaptionedSplit:
    """The split `name` of the checkpoint's dataset; one clear line when it is not there."""
    # load_split checks first: it names the missing files, or the dataset's split names
    return datasets.load_split(ckpt.data["dataset"], ckpt.data["data_root"], name, ckpt.data["split_seed"])


def image_gallery(ckpt: Checkpoint, split: CaptionedSplit) -> tuple[Tensor, np.ndarray, Path]:
    """(float32 `[n, dim]` embeddings of the split's readable images, their indices in `split`, the cache file).

    Images the image cache skipped (unreadable or absent) are left out, as in training and evaluation.

    Computed once per checkpoint (by content hash), split and image size, from the split's image cache (built if
    missing), and stored under cache_dir with what it depends on; a cache whose metadata differs is rebuilt. A
    pretrained model's gallery is its feature cache's image embeddings: those of the `baselines` zero-shot row.
    """
    hp = ckpt.data
    size = hp["cache_image_size"]
    if ckpt.pretrained:
        features = ensure_feature_cache(
            split,
            hp["cache_dir"],
            size,
            ckpt.name,
            ckpt.device,
            ckpt.batch_size,
            hp["num_workers"],
            hp["max_bad_images"],
        )
        emb = features["embeds"].float()
        path = feature_cache_path(hp["cache_dir"], split, ckpt.name, size)
    else:
        emb, path = _checkpoint_gallery(ckpt, split)
    usable = np.setdiff1d(np.arange(len(emb)), image_cache.bad_image_indices(hp["cache_dir"], split, size))
    return emb[torch.from_numpy(usable)], usable, path


def _checkpoint_gallery(ckpt: Checkpoint, split: CaptionedSplit) -> tuple[Tensor, Path]:
    hp = ckpt.data
    size = hp["cache_image_size"]
    path = split.cache_file(hp["cache_dir"], "gallery", size, f"crop{hp['image_size']}", ckpt.sha256[:16])
    meta = {
        "version": GALLERY_VERSION,
        "checkpoint_sha256": ckpt.sha256,
        "image_size": hp["image_size"],
        "image_cache": image_cache.expected_meta(split, size),
        "dim": ckpt.embed_dim,
    }
    emb = _load_gallery(path, meta)
    if emb is None:
        t0 = time.perf_counter()
        pixels = image_cache.ensure_image_cache(
            hp["cache_dir"], split, size, ckpt.device, hp["num_workers"], hp["max_bad_images"]
        )
        emb = embed_images(ckpt, pixels, progress=True)
        save_torch({"meta": meta, "embeddings": emb, "image_ids": torch.from_numpy(split.image_ids)}, path)
        log.info("image gallery %s: %d images embedded in %.1f s", path, len(emb), time.perf_counter() - t0)
    else:
        log.info("image gallery %s: reused", path)
    return emb, path


def caption_gallery(ckpt: Checkpoint, split: CaptionedSplit) -> tuple[Tensor, Path]:
    """(float16 `[n_captions, dim]` embeddings of every caption of `split`, their file), built when missing or stale:
    the caption cache fit uses (the frozen text model's; it does not depend on the checkpoint), or for a checkpoint
    with its own trained text encoder, that encoder's embeddings, named and checked by the checkpoint's hash."""
    hp = ckpt.data
    if ckpt.model.text_tower is None:
        path = caption_cache.ensure_caption_cache(
            split,
            hp["cache_dir"],
            hp["text_model"],
            hp["max_length"],
            lambda: text_encoder(ckpt),
            hp["text_batch_size"],
        )
        meta = caption_cache.expected_meta(split, hp["text_model"], hp["max_length"])
        return caption_cache.caption_embeddings(path, meta, split), path
    path, meta = caption_cache.checkpoint_caption_cache(hp["cache_dir"], split, ckpt.sha256)
    if caption_cache.load_caption_cache(path, meta, split) is None:
        caption_cache.build_caption_cache(split, text_encoder(ckpt), path, meta, hp["text_batch_size"])
    return caption_cache.caption_embeddings(path, meta, split), path


def _load_gallery(path: Path, meta: dict[str, Any]) -> Tensor | None:
    cache = load_cache(path, meta, "image gallery")
    if cache is None:
        return None
    emb = cache.get("embeddings")
    if not isinstance(emb, Tensor) or emb.shape != (meta["image_cache"]["n_images"], meta["dim"]):
        log.warning("image gallery %s holds embeddings of another shape; rebuilding it", path)
        return None
    return emb


# -- outputs -----------------------------------------------------------------------------------------------------------
def unused_path(path: Path, beside: Sequence[str] = (".png",)) -> Path:
    """`path` if neither it nor its companions (`beside`: same name, other suffix) exist; else the first free
    `<stem>-2<suffix>`, `<stem>-3<suffix>`, ...: a job's new result never replaces an earlier one."""
    candidate, n = path, 1
    while any(candidate.with_suffix(s).exists() for s in (path.suffix, *beside)):
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    if candidate != path:
        log.info("%s exists (an earlier result, kept): writing %s", path, candidate)
    return candidate


def slug(text: str, limit: int = 60) -> str:
    """A file-name-safe version of `text` (letters, digits, dashes)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:limit].strip("-") or "query"


def save_image_grid(
    path: Path,
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    colors: Sequence[str] | None = None,
    suptitle: str = "",
    cols: int = 4,
) -> None:
    """A PNG grid of HWC uint8 images with a title each (matplotlib's Agg renderer; no pyplot, no global state)."""
    from matplotlib.figure import Figure

    cols = max(1, min(cols, len(images)))
    rows = max(1, math.ceil(len(images) / cols))
    fig = Figure(figsize=(2.4 * cols, 2.6 * rows + 0.5), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes:
        ax.axis("off")
    for ax, image, title, color in zip(axes, images, titles, colors or ["black"] * len(images)):
        ax.imshow(image)
        ax.set_title(title, fontsize=9, color=color)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
