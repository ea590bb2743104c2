"""The feature cache: equal to running the tower, reused, rebuilt when the model, the pixels or the file change."""

import logging

import numpy as np
import pytest
import torch

from clip_lab.data import feature_cache, image_cache
from clip_lab.data.coco import load_coco_split
from clip_lab.data.feature_cache import ensure_feature_cache, feature_cache_path
from clip_lab.data.synthetic import make_clip_model
from clip_lab.models.vision import HFImageTower

SIZE = 72  # the demo's image cache side: larger than the tiny model's 64, so the resize runs too


@pytest.fixture(scope="module")
def split(demo_root):
    return load_coco_split(demo_root, "val2014")


@pytest.fixture
def builds(monkeypatch):
    """The model names the feature cache is built with, call by call."""
    names = []
    real = feature_cache.build_feature_cache

    def counting(images, tower, *args, **kwargs):
        names.append(tower.name)
        return real(images, tower, *args, **kwargs)

    monkeypatch.setattr(feature_cache, "build_feature_cache", counting)
    return names


def direct(model, cache_dir, split, size=SIZE):
    images = image_cache.open_image_cache(cache_dir, split, size)
    return HFImageTower(model)(torch.from_numpy(np.array(images)).permute(0, 3, 1, 2))


def test_round_trip_equals_the_tower_and_is_reused(split, clip_model, tmp_path, builds, monkeypatch):
    cache = ensure_feature_cache(split, tmp_path, SIZE, clip_model, "cpu", batch_size=40)  # 96 = 40 + 40 + 16
    n = len(split.file_names)
    assert cache["pooled"].shape == (n, 128) and cache["embeds"].shape == (n, 128)
    assert cache["pooled"].dtype == cache["embeds"].dtype == torch.float16
    assert cache["meta"]["input_size"] == 64 and cache["meta"]["model"] == clip_model
    assert feature_cache_path(tmp_path, split, clip_model, SIZE).is_file()
    assert not list(tmp_path.glob("*.tmp")) and builds == [clip_model]
    pooled, embeds = direct(clip_model, tmp_path, split)  # one batch of all: rows do not depend on batching
    torch.testing.assert_close(cache["pooled"].float(), pooled, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(cache["embeds"].float(), embeds, atol=1e-3, rtol=0)

    def no_tower(name):
        raise AssertionError("a valid feature cache must not load the image tower")

    monkeypatch.setattr(feature_cache, "image_tower", no_tower)
    again = ensure_feature_cache(split, tmp_path, SIZE, clip_model, "cpu")
    assert torch.equal(again["pooled"], cache["pooled"]) and torch.equal(again["embeds"], cache["embeds"])


def test_another_model_or_image_size_rebuilds(split, clip_model, tmp_path, builds, caplog):
    first = ensure_feature_cache(split, tmp_path, SIZE, clip_model, "cpu")
    other = str(tmp_path / "other_clip")
    make_clip_model(tmp_path / "other_clip", seed=1)
    second = ensure_feature_cache(split, tmp_path, SIZE, other, "cpu")
    assert not torch.equal(second["embeds"], first["embeds"])
    # the same folder holding other weights: same path, stale fingerprint
    make_clip_model(tmp_path / "other_clip", seed=2)
    with caplog.at_level(logging.WARNING, logger=feature_cache.__name__):
        third = ensure_feature_cache(split, tmp_path, SIZE, other, "cpu")
    assert "model_fingerprint changed" in caplog.text and not torch.equal(third["embeds"], second["embeds"])
    torch.testing.assert_close(third["embeds"].float(), direct(other, tmp_path, split)[1], atol=1e-3, rtol=0)
    # other pixels: a new image cache, and features from it
    fourth = ensure_feature_cache(split, tmp_path, 80, clip_model, "cpu")
    assert image_cache.open_image_cache(tmp_path, split, 80) is not None
    assert not torch.equal(fourth["embeds"], first["embeds"])
    assert builds == [clip_model, other, other, clip_model]


def test_truncated_file_is_rebuilt(split, clip_model, tmp_path, builds, caplog):
    first = ensure_feature_cache(split, tmp_path, SIZE, clip_model, "cpu")
    path = feature_cache_path(tmp_path, split, clip_model, SIZE)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger=feature_cache.__name__):
        again = ensure_feature_cache(split, tmp_path, SIZE, clip_model, "cpu")
    assert "unreadable" in caplog.text and len(builds) == 2
    assert torch.equal(again["embeds"], first["embeds"])
