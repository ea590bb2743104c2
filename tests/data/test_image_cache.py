"""The image cache: pixels equal the reference decode and the GPU path's, metadata round trip, staleness, bad images,
atomic writes."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clip_lab.data import image_cache
from clip_lab.data.coco import load_coco_split
from clip_lab.errors import ClipLabError


def test_central_square_is_resized(tmp_path):
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :10] = img[:, 50:] = (255, 0, 0)  # side bands that the central square drops
    img[:, 10:50] = (0, 0, 255)
    Image.fromarray(img).save(tmp_path / "wide.png")
    out = image_cache.decode_pil(tmp_path / "wide.png", 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert (out == (0, 0, 255)).all()


def test_cache_holds_each_image_decoded_once_in_split_order(demo_root, tmp_path):
    split = load_coco_split(demo_root, "val2014")
    images = image_cache.build_image_cache(tmp_path, split, 40, "cpu", workers=2)
    assert images.shape == (96, 40, 40, 3) and images.dtype == np.uint8 and not images.flags.writeable
    for i in (0, 37, 95):
        assert np.array_equal(images[i], image_cache.decode_pil(split.image_path(i), 40))
    reopened = image_cache.open_image_cache(tmp_path, split, 40)
    assert reopened is not None and np.array_equal(np.asarray(reopened), np.asarray(images))
    npy, meta_file = image_cache.image_cache_paths(tmp_path, split, 40)
    assert (npy.name, meta_file.name) == (
        f"images_val2014_{split.fingerprint}_40.npy",
        f"images_val2014_{split.fingerprint}_40.json",
    )
    meta = json.loads(meta_file.read_text())
    assert meta == image_cache.expected_meta(split, 40) | {"bad_images": []}
    assert sorted(tmp_path.iterdir()) == [meta_file, npy]
    assert image_cache.open_image_cache(tmp_path, split, 48) is None  # another resolution is another cache
    serial = image_cache.build_image_cache(tmp_path / "serial", split, 40, "cpu", workers=1)
    assert np.array_equal(np.asarray(serial), np.asarray(images))


def test_changed_annotations_or_damaged_files_make_the_cache_stale(demo_root, tmp_path, caplog):
    root = tmp_path / "coco"
    shutil.copytree(demo_root, root)
    split = load_coco_split(root, "val2014")
    cache = tmp_path / "cache"
    image_cache.build_image_cache(cache, split, 32, "cpu", workers=1)
    assert image_cache.open_image_cache(cache, split, 32) is not None

    ann = root / "annotations" / "captions_val2014.json"
    raw = json.loads(ann.read_text())
    raw["images"] = raw["images"][:-1]
    raw["annotations"] = [a for a in raw["annotations"] if a["image_id"] != raw["images"][-1]["id"] + 1]
    ann.write_text(json.dumps(raw))
    changed = load_coco_split(root, "val2014")
    assert changed.fingerprint != split.fingerprint  # other data: a file of its own, not there yet
    assert image_cache.open_image_cache(cache, changed, 32) is None and "stale" not in caplog.text
    # the old cache under the new name (copied or renamed by hand): its metadata tells it apart
    for old, new in zip(*(image_cache.image_cache_paths(cache, s, 32) for s in (split, changed))):
        shutil.copy(old, new)
    assert image_cache.open_image_cache(cache, changed, 32) is None
    assert "annotation_sha256" in caplog.text and "image_list_sha256" in caplog.text and "n_images" in caplog.text

    image_cache.build_image_cache(cache, changed, 32, "cpu", workers=1)
    assert image_cache.open_image_cache(cache, changed, 32).shape[0] == len(changed.file_names) == 95
    npy, meta_file = image_cache.image_cache_paths(cache, changed, 32)
    meta_file.write_text("{not json")
    assert image_cache.open_image_cache(cache, changed, 32) is None
    image_cache.build_image_cache(cache, changed, 32, "cpu", workers=1)
    npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])  # truncated pixels, metadata intact
    assert image_cache.open_image_cache(cache, changed, 32) is None


def test_too_many_unreadable_images_stop_the_build_naming_them_and_leave_no_cache(demo_root, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(demo_root, root)
    split = load_coco_split(root, "val2014")
    bad = split.image_path(5)
    bad.write_bytes(b"this is not a jpeg")
    cache = tmp_path / "cache"
    with pytest.raises(ClipLabError, match=f"1 of 96 images.*{bad}.*max_bad_images"):
        image_cache.build_image_cache(cache, split, 32, "cpu", workers=2, max_bad=0.005)
    assert list(cache.iterdir()) == []
    image_cache.build_image_cache(cache, split, 32, "cpu", workers=2, max_bad=0.02)  # 1 of 96 is tolerated
    assert image_cache.bad_image_indices(cache, split, 32).tolist() == [5]
    with pytest.raises(ClipLabError, match="max_bad_images"):  # a stricter run refuses the same cache
        image_cache.ensure_image_cache(cache, split, 32, "cpu", max_bad=0.0)


def write_odd_images(folder):
    """Every kind of file a real download holds, named .jpg; returns {name: expected outcome}."""
    from PIL import Image

    rgb = Image.new("RGB", (40, 30), (200, 30, 30))
    rgb.convert("L").save(folder / "gray.jpg")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    rgb.convert("P").save(folder / "palette.jpg", format="PNG")
    Image.new("RGBA", (30, 30), (200, 30, 30, 128)).save(folder / "alpha.jpg", format="PNG")
    rgb.save(folder / "png_named_jpg.jpg", format="PNG")
    Image.new("RGB", (1, 1), (200, 30, 30)).save(folder / "tiny.jpg")
    Image.new("RGB", (2000, 3), (200, 30, 30)).save(folder / "wide.jpg")
    Image.new("RGB", (3, 2000), (200, 30, 30)).save(folder / "tall.jpg")
    rgb.resize((400, 300)).save(folder / "full.jpg", quality=95)
    (folder / "truncated.jpg").write_bytes((folder / "full.jpg").read_bytes()[:600])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image at all")
    good = ["gray", "cmyk", "palette", "alpha", "png_named_jpg", "tiny", "wide", "tall", "full"]
    return good, ["truncated", "empty", "text", "absent"]


def test_odd_but_readable_images_become_rgb_and_broken_or_absent_ones_are_skipped_and_listed(tmp_path, caplog):
    from clip_lab.data.split import CaptionedSplit

    folder = tmp_path / "imgs"
    folder.mkdir()
    good, bad = write_odd_images(folder)
    names = good + bad
    split = CaptionedSplit(
        name="odd",
        annotation_file=tmp_path / "ann.json",
        image_dir=folder,
        image_ids=np.arange(len(names)),
        file_names=[f"{n}.jpg" for n in names],
        caption_ids=np.arange(len(names)),
        caption_image=np.arange(len(names)),
        captions=["x"] * len(names),
    )
    (tmp_path / "ann.json").write_text("{}")
    cache = tmp_path / "cache"
    with caplog.at_level("WARNING"):
        pixels = image_cache.build_image_cache(cache, split, 16, "cpu", workers=2, max_bad=0.5)
    skipped = image_cache.bad_image_indices(cache, split, 16).tolist()
    assert [names[i] for i in skipped] == bad
    assert "4 of 13 images unreadable or absent, skipped" in caplog.text
    meta = json.loads(image_cache.image_cache_paths(cache, split, 16)[1].read_text())
    assert {b["file"].rsplit("/", 1)[1] for b in meta["bad_images"]} == {f"{n}.jpg" for n in bad}
    assert all(b["reason"] for b in meta["bad_images"])
    for k, name in enumerate(good):
        px = pixels[k].astype(int)
        if name == "gray":  # one channel repeated
            assert (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all()
        else:  # red survives every conversion (CMYK, palette, alpha, PNG content, extreme shapes)
            assert px[..., 0].mean() > 150 and px[..., 1].mean() < 90, name
    for i in skipped:
        assert (pixels[i] == 0).all()  # skipped rows hold nothing the loader would ever read


def photo_like(w, h, seed):
    """A JPEG-worthy image, ~150 kB at 640x480 and quality 90 as COCO's are: luma texture with a natural image's
    1/f-like spectrum (detail at every scale), smoother chroma (as in photos, and as 4:2:0 JPEG assumes), and a few
    hard-edged coloured shapes."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :])
    f[0, 0] = 1

    def texture(beta):
        t = np.fft.irfft2((rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f**beta, s=(h, w))
        return (t - t.mean()) / t.std()

    ycc = np.stack([128 + 50 * texture(0.8), 128 + 12 * texture(1.8), 128 + 12 * texture(1.8)], axis=-1)
    pil = Image.fromarray(ycc.clip(0, 255).astype(np.uint8), "YCbCr").convert("RGB")
    draw = ImageDraw.Draw(pil)
    for _ in range(8):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(5, max(6, min(w, h) // 5))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((cx - r, cy - r, cx + r, cy + r), fill=tuple(rng.integers(0, 256, 3).tolist()))
    return pil


# COCO-like sizes, baseline and progressive, 4:4:4 and 4:2:0 chroma; a draft decode (libjpeg's 1/2-1/8 scaling)
# would touch those with a short side >= 2 x size: at 256 px the large ones, at the demo's 72 px nearly all
PHOTOS = {
    "640x480": (640, 480, {}),
    "480x640": (480, 640, {}),
    "1024x768": (1024, 768, {}),
    "2048x1536": (2048, 1536, {}),
    "612x612": (612, 612, {}),
    "500x375": (500, 375, {}),
    "300x200": (300, 200, {}),
    "1024x768_progressive": (1024, 768, {"progressive": True}),
    "1024x768_444": (1024, 768, {"subsampling": 0}),
    "1024x768_420": (1024, 768, {"subsampling": 2}),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The photo-like JPEGs, and one real public photograph: matplotlib's sample `grace_hopper.jpg` (512 x 600, a
    camera JPEG; a draft decode to 256 px moved it by 2.4 grey levels)."""
    import matplotlib

    folder = tmp_path_factory.mktemp("photos")
    for seed, (name, (w, h, options)) in enumerate(PHOTOS.items()):
        photo_like(w, h, seed).save(folder / f"{name}.jpg", quality=90, **options)
    return [folder / f"{name}.jpg" for name in PHOTOS] + [
        Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    ]


def gpu_path(files, size, folder, device):
    """The GPU path's own code (`_fill_gpu`: batched decode_jpeg, central square, antialiased F.interpolate) on
    `device`; on the CPU torchvision decodes with libjpeg-turbo instead of nvJPEG, the arithmetic is the same."""
    from types import SimpleNamespace

    path = folder / f"gpu_{size}.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3)).flush()
    bad = image_cache._fill_gpu(
        path, [str(f) for f in files], size, torch.device(device), SimpleNamespace(update=lambda n: None), readers=1
    )
    assert bad == []
    return np.load(path)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (nvJPEG)")),
    ],
)
@pytest.mark.parametrize("size", [256, 72])  # the COCO cache and the demo's
def test_cpu_path_matches_the_gpu_path_on_photo_like_jpegs(photos, tmp_path, size, device):
    gpu = gpu_path(photos, size, tmp_path, device).astype(np.int16)
    mad = {
        f.stem: round(float(np.abs(image_cache.decode_pil(f, size).astype(np.int16) - gpu[k]).mean()), 3)
        for k, f in enumerate(photos)
    }
    assert max(mad.values()) <= 1.0, f"mean absolute difference per image, grey levels: {mad}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (nvJPEG)")
def test_gpu_decoding_matches_the_cpu_path(demo_root, tmp_path):
    split = load_coco_split(demo_root, "val2014")
    gpu = image_cache.build_image_cache(tmp_path / "gpu", split, 64, "cuda")
    cpu = image_cache.build_image_cache(tmp_path / "cpu", split, 64, "cpu", workers=2)
    diff = np.abs(np.asarray(gpu).astype(np.int16) - np.asarray(cpu).astype(np.int16))
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 12  # two JPEG decoders' IDCTs, same resize


def _build(args):
    root, cache = args
    from clip_lab.data import image_cache as ic
    from clip_lab.data.coco import load_coco_split as load

    ic.build_image_cache(cache, load(root, "val2014"), 24, "cpu", workers=1)


def test_two_processes_building_one_cache_leave_one_valid_cache(demo_root, tmp_path):
    import multiprocessing

    cache = tmp_path / "cache"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_build, [(str(demo_root), str(cache))] * 2)
    split = load_coco_split(demo_root, "val2014")
    images = image_cache.open_image_cache(cache, split, 24)
    assert images is not None and images.shape == (96, 24, 24, 3)
    assert np.array_equal(images[10], image_cache.decode_pil(split.image_path(10), 24))
    assert sorted(cache.iterdir()) == sorted(image_cache.image_cache_paths(cache, split, 24))  # no temp


def test_an_interrupted_build_leaves_nothing_a_later_run_trusts(demo_root, tmp_path, monkeypatch):
    split = load_coco_split(demo_root, "val2014")
    cache = tmp_path / "cache"
    image_cache.build_image_cache(cache, split, 24, "cpu", workers=1)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(image_cache, "_fill_cpu", crash)
    with pytest.raises(KeyboardInterrupt):  # a rebuild (say at another size) killed half way
        image_cache.build_image_cache(cache, split, 32, "cpu", workers=1)
    assert image_cache.open_image_cache(cache, split, 32) is None
    assert image_cache.open_image_cache(cache, split, 24) is not None  # the earlier cache is untouched
    assert sorted(cache.iterdir()) == sorted(image_cache.image_cache_paths(cache, split, 24))


# PIL's exif_transpose turns orientation o upright with METHOD[o]; storing the upright picture turned by the inverse,
# tagged o, gives a file that must come out upright again
METHOD = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
INVERSE = {**METHOD, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
QUADRANTS = ((255, 0, 0), (0, 200, 0), (0, 0, 255), (240, 240, 0))  # top-left, top-right, bottom-left, bottom-right


def upright_picture(w=96, h=64):
    pixels = np.zeros((h, w, 3), np.uint8)
    for k, colour in enumerate(QUADRANTS):
        pixels[(k // 2) * h // 2 : (k // 2 + 1) * h // 2, (k % 2) * w // 2 : (k % 2 + 1) * w // 2] = colour
    return Image.fromarray(pixels)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (nvJPEG)")),
    ],
)
def test_exif_rotated_jpegs_come_out_upright_on_both_paths(tmp_path, device):
    files = []
    for o in range(1, 9):
        stored = upright_picture() if o == 1 else upright_picture().transpose(INVERSE[o])
        exif = Image.Exif()
        exif[image_cache.ORIENTATION] = o
        files.append(tmp_path / f"o{o}.jpg")
        stored.save(files[-1], quality=95, subsampling=0, exif=exif.tobytes())
        assert image_cache.exif_orientation(files[-1].read_bytes()) == o
    size = 32
    gpu = gpu_path(files, size, tmp_path, device)
    for k, f in enumerate(files):
        for square in (image_cache.decode_pil(f, size), gpu[k]):
            # the central 64 x 64 square of the upright 96 x 64 picture: its quadrants' colours in place
            for q, colour in enumerate(QUADRANTS):
                rows = slice((q // 2) * 16 + 2, (q // 2) * 16 + 14)
                cols = slice((q % 2) * 16 + 2, (q % 2) * 16 + 14)
                assert np.abs(square[rows, cols].reshape(-1, 3).mean(0) - colour).max() < 12, (f.name, q)
    assert image_cache.exif_orientation(b"not an image") == 1
