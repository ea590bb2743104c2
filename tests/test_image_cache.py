"""The image cache: pixels equal the reference decode, metadata round trip, staleness, bad images, atomic writes."""

import json
import shutil

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
    meta = json.loads((tmp_path / "images_val2014_40.json").read_text())
    assert meta == image_cache.expected_meta(split, 40) | {"bad_images": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images_val2014_40.json", "images_val2014_40.npy"]
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
    assert image_cache.open_image_cache(cache, changed, 32) is None
    assert "annotation_sha256" in caplog.text and "image_list_sha256" in caplog.text and "n_images" in caplog.text

    image_cache.build_image_cache(cache, changed, 32, "cpu", workers=1)
    assert image_cache.open_image_cache(cache, changed, 32).shape[0] == len(changed.file_names) == 95
    (cache / "images_val2014_32.json").write_text("{not json")
    assert image_cache.open_image_cache(cache, changed, 32) is None
    image_cache.build_image_cache(cache, changed, 32, "cpu", workers=1)
    npy = cache / "images_val2014_32.npy"
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
    split = CaptionedSplit(name="odd", annotation_file=tmp_path / "ann.json", image_dir=folder,
                           image_ids=np.arange(len(names)), file_names=[f"{n}.jpg" for n in names],
                           caption_ids=np.arange(len(names)), caption_image=np.arange(len(names)),
                           captions=["x"] * len(names))
    (tmp_path / "ann.json").write_text("{}")
    cache = tmp_path / "cache"
    with caplog.at_level("WARNING"):
        pixels = image_cache.build_image_cache(cache, split, 16, "cpu", workers=2, max_bad=0.5)
    skipped = image_cache.bad_image_indices(cache, split, 16).tolist()
    assert [names[i] for i in skipped] == bad
    assert "4 of 13 images unreadable or absent, skipped" in caplog.text
    meta = json.loads((cache / "images_odd_16.json").read_text())
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
    assert sorted(p.name for p in cache.iterdir()) == ["images_val2014_24.json", "images_val2014_24.npy"]  # no temp


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
    assert sorted(p.name for p in cache.iterdir()) == ["images_val2014_24.json", "images_val2014_24.npy"]
