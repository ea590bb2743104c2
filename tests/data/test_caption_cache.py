"""The caption cache: round trip, staleness on changed annotations or model, atomic rebuild."""

import json
import shutil

import torch

from clip_lab.data.caption_cache import (
    build_caption_cache,
    caption_cache_path,
    expected_meta,
    load_caption_cache,
)
from clip_lab.data.coco import load_coco_split
from clip_lab.data.datamodule import RetrievalData
from clip_lab.models.text import TextEncoder


def test_round_trip_and_invalidation(demo_root, text_model, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(demo_root, root)
    split = load_coco_split(root, "val2014")
    encoder = TextEncoder(text_model, max_length=32)
    path = caption_cache_path(tmp_path / "cache", split, text_model, 32)
    assert path.name.startswith(f"captions_val2014_{split.fingerprint}_") and path.name.endswith("_L32.pt")
    meta = expected_meta(split, text_model, 32)
    assert load_caption_cache(path, meta, split) is None  # nothing yet
    build_caption_cache(split, encoder, path, meta, batch_size=50)
    cache = load_caption_cache(path, meta, split)
    assert cache is not None
    expected = encoder.encode(split.captions)
    assert torch.allclose(cache["embeddings"].float(), expected, atol=2e-3)
    assert torch.equal(cache["ann_ids"], torch.from_numpy(split.caption_ids))
    assert cache["meta"]["dim"] == encoder.dim and cache["meta"]["text_model"] == text_model
    assert not list(path.parent.glob("*.tmp"))  # written atomically, no leftovers

    # another model or max_length: stale
    assert load_caption_cache(path, expected_meta(split, text_model, 16), split) is None
    # an edited annotation file: stale
    ann = root / "annotations" / "captions_val2014.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["caption"] = "a purple cross"
    ann.write_text(json.dumps(data))
    edited = load_coco_split(root, "val2014")
    assert caption_cache_path(tmp_path / "cache", edited, text_model, 32) != path  # other data, another file
    assert load_caption_cache(path, expected_meta(edited, text_model, 32), edited) is None  # and here: stale
    # a truncated file: unreadable, not trusted
    path.write_bytes(path.read_bytes()[:100])
    assert load_caption_cache(path, meta, split) is None


def test_prepare_data_builds_a_new_cache_for_edited_annotations(demo_root, text_model, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(demo_root, root)
    kwargs = dict(data_root=str(root), text_model=text_model, max_length=32, cache_dir=str(tmp_path / "cache"))
    dm = RetrievalData(**kwargs)
    dm.prepare_data()
    path = caption_cache_path(tmp_path / "cache", dm.split("val2014"), text_model, 32)
    first = torch.load(path, weights_only=True)
    ann = root / "annotations" / "captions_val2014.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["caption"] = "a purple cross"
    ann.write_text(json.dumps(data))
    dm = RetrievalData(**kwargs)
    dm.prepare_data()
    edited = caption_cache_path(tmp_path / "cache", dm.split("val2014"), text_model, 32)
    assert edited != path and torch.equal(torch.load(path, weights_only=True)["embeddings"], first["embeddings"])
    second = torch.load(edited, weights_only=True)
    assert first["meta"]["annotation_sha256"] != second["meta"]["annotation_sha256"]
    assert not torch.equal(first["embeddings"][0], second["embeddings"][0])
    assert torch.equal(first["embeddings"][1:], second["embeddings"][1:])
    dm.setup("test")
    assert torch.equal(dm.caption_embeddings("val2014"), second["embeddings"])
