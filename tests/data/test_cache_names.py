"""Cache names: other data under the same split names (another generated set, a copy with one caption changed, the same
annotations over another image folder) gets cache files of its own, and each data's caches stay valid side by side."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from clip_lab.data import caption_cache, feature_cache, image_cache
from clip_lab.data import split as split_module
from clip_lab.data.coco import load_coco_split
from clip_lab.data.datamodule import RetrievalData
from clip_lab.data.synthetic import make_demo_dataset

SIZE = 24


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Four COCO-layout data roots, all with splits train2014 and val2014, no two holding the same data."""
    tmp = tmp_path_factory.mktemp("roots")
    first = make_demo_dataset(tmp / "first", n_train=12, n_val=8, seed=0, sides=(40, 60))
    other = make_demo_dataset(tmp / "other", n_train=12, n_val=8, seed=1, sides=(40, 60))
    edited = tmp / "edited"  # one caption of val2014 changed
    shutil.copytree(first, edited)
    ann = edited / "annotations" / "captions_val2014.json"
    raw = json.loads(ann.read_text())
    raw["annotations"][0]["caption"] = "a purple cross"
    ann.write_text(json.dumps(raw))
    moved = tmp / "moved"  # byte-identical annotations over another image folder
    shutil.copytree(first, moved)
    return {"first": first, "other": other, "edited": edited, "moved": moved}


def prepare(root, text_model, cache):
    dm = RetrievalData(
        data_root=str(root),
        text_model=text_model,
        max_length=32,
        cache_dir=str(cache),
        image_size=16,
        cache_image_size=SIZE,
        num_workers=0,
    )
    dm.prepare_data()
    return dm


def test_same_split_names_over_other_data_keep_their_own_valid_caches(roots, text_model, tmp_path, caplog):
    cache = tmp_path / "cache"
    prepare(roots["first"], text_model, cache)
    built = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert len(built) == 6  # per split: pixels, their metadata, caption embeddings
    for name in ("other", "edited", "moved"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="clip_lab"):
            prepare(roots[name], text_model, cache)
        assert "building the caption cache" in caplog.text and "images/s" in caplog.text  # built, not found
    assert len(list(cache.iterdir())) == 4 * 6  # no file shared, none evicted

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clip_lab"):
        dm = prepare(roots["first"], text_model, cache)  # the first data's caches are reused as they are
    assert {p: p.stat().st_mtime_ns for p in built} == built
    assert "stale" not in caplog.text and "building" not in caplog.text and "images/s" not in caplog.text
    for root in roots.values():  # and every cache holds its own data
        split = load_coco_split(root, "val2014")
        pixels = image_cache.open_image_cache(cache, split, SIZE)
        # (within the 1 grey level by which nvJPEG, on a GPU machine, and PIL may differ; other data is far off)
        decoded = image_cache.decode_pil(split.image_path(3), SIZE).astype(int)
        assert pixels is not None and np.abs(pixels[3].astype(int) - decoded).mean() <= 1
        path = caption_cache.caption_cache_path(cache, split, text_model, 32)
        assert caption_cache.load_caption_cache(path, caption_cache.expected_meta(split, text_model, 32), split)
    dm.setup("test")
    edited = prepare(roots["edited"], text_model, cache)
    edited.setup("test")
    first_emb, edited_emb = dm.caption_embeddings("val2014"), edited.caption_embeddings("val2014")
    assert not torch.equal(first_emb[0], edited_emb[0]) and torch.equal(first_emb[1:], edited_emb[1:])


def test_the_fingerprint_follows_the_data_and_every_cache_name_holds_it(roots, tmp_path, monkeypatch):
    hashed = []
    real = split_module.sha256_file
    monkeypatch.setattr(split_module, "sha256_file", lambda path: hashed.append(path) or real(path))
    first = load_coco_split(roots["first"], "val2014")
    for _ in range(3):  # the annotation file is hashed once per split, however many caches ask
        image_cache.expected_meta(first, SIZE)
        caption_cache.expected_meta(first, "m", 32)
    assert hashed == [first.annotation_file]
    assert load_coco_split(roots["first"], "val2014").fingerprint == first.fingerprint  # stable across loads
    link = tmp_path / "link"
    link.symlink_to(roots["first"])
    assert load_coco_split(link, "val2014").fingerprint == first.fingerprint  # the same folder by another path
    splits = [first] + [load_coco_split(roots[n], "val2014") for n in ("other", "edited", "moved")]
    assert len({s.fingerprint for s in splits}) == 4 and all(len(s.fingerprint) == 12 for s in splits)
    for s in splits:
        assert s.name == "val2014"
        names = [
            *(p.name for p in image_cache.image_cache_paths(tmp_path, s, SIZE)),
            caption_cache.caption_cache_path(tmp_path, s, "org/model", 32).name,
            feature_cache.feature_cache_path(tmp_path, s, "org/model", SIZE).name,
        ]
        assert names == [
            f"images_val2014_{s.fingerprint}_{SIZE}.npy",
            f"images_val2014_{s.fingerprint}_{SIZE}.json",
            f"captions_val2014_{s.fingerprint}_org_model_L32.pt",
            f"features_val2014_{s.fingerprint}_org_model_{SIZE}.pt",
        ]
