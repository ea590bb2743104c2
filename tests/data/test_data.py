"""COCO-format loading, missing-file errors, the pair sampler and the datamodule on generated data."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

from clip_lab.data import image_cache
from clip_lab.data.coco import check_coco_files, load_coco_split
from clip_lab.data.datamodule import RetrievalData
from clip_lab.data.sampling import PairBatchSampler
from clip_lab.errors import ClipLabError


def test_missing_files_are_each_named_with_their_download(tmp_path):
    (tmp_path / "val2014").mkdir()
    with pytest.raises(ClipLabError) as err:
        check_coco_files(tmp_path, ["train2014", "val2014"])
    msg = str(err.value)
    assert f"{tmp_path}/train2014/" in msg and "train2014.zip" in msg
    assert "captions_train2014.json" in msg and "captions_val2014.json" in msg
    assert "annotations_trainval2014.zip" in msg
    assert f"{tmp_path}/val2014/ " not in msg  # present: not listed


def test_datamodule_stops_before_any_work_without_data(tmp_path, text_model):
    with pytest.raises(ClipLabError, match="COCO 2014 files missing"):
        RetrievalData(data_root=str(tmp_path), text_model=text_model, cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_load_split_groups_captions_by_image(demo_root):
    split = load_coco_split(demo_root, "train2014")
    raw = json.loads((demo_root / "annotations" / "captions_train2014.json").read_text())
    assert len(split.image_ids) == len(raw["images"]) == 256
    assert len(split.captions) == len(raw["annotations"])
    assert (np.diff(split.image_ids) > 0).all() and (np.diff(split.caption_image) >= 0).all()
    by_id = {a["id"]: a for a in raw["annotations"]}
    for j in (0, 7, len(split.captions) - 1):
        ann = by_id[int(split.caption_ids[j])]
        assert ann["caption"] == split.captions[j]
        assert ann["image_id"] == split.image_ids[split.caption_image[j]]
    start = split.caption_start
    assert start[0] == 0 and start[-1] == len(split.captions) and (np.diff(start) == 5).all()


def test_image_pairs_visit_each_image_once_with_one_of_its_captions():
    start = np.array([0, 2, 5, 5, 6, 13])  # image 2 has no caption, image 4 has 7
    sampler = PairBatchSampler(start, batch_size=2, pairs="image", seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2
    pairs = [p for b in batches for p in b]
    assert sorted(i for i, _ in pairs) == [0, 1, 3, 4]
    assert all(start[i] <= c < start[i + 1] for i, c in pairs)
    assert list(sampler) == batches  # same epoch, same batches
    epochs = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    assert len({str(e) for e in epochs}) > 1  # reshuffled and re-drawn per epoch


def test_caption_pairs_visit_every_caption_once_and_never_repeat_an_image_in_a_batch():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 8, size=200)
    start = np.concatenate([[0], np.cumsum(counts)])
    sampler = PairBatchSampler(start, batch_size=16, pairs="caption", drop_last=False, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    captions = Counter(c for b in batches for _, c in b)
    assert sorted(captions) == list(range(start[-1])) and set(captions.values()) == {1}
    for b in batches:
        images = [i for i, _ in b]
        assert len(images) == len(set(images))


def test_first_pairs_for_evaluation_keep_order_and_mark_captionless_images():
    start = np.array([0, 2, 2, 5])
    sampler = PairBatchSampler(start, batch_size=2, pairs="first", shuffle=False, images=np.array([0, 1, 2]))
    assert list(sampler) == [[(0, 0), (1, -1)], [(2, 2)]]


def test_datamodule_batches_on_generated_data(demo_root, text_model, tmp_path):
    dm = RetrievalData(
        data_root=str(demo_root),
        text_model=text_model,
        max_length=32,
        cache_dir=str(tmp_path),
        image_size=32,
        cache_image_size=40,
        batch_size=16,
        eval_batch_size=40,
        num_workers=0,
        val_images=50,
    )
    dm.prepare_data()
    paths = [p.name for s in ("train2014", "val2014") for p in image_cache.image_cache_paths(tmp_path, dm.split(s), 40)]
    assert sorted(p.name for p in tmp_path.glob("images_*")) == sorted(paths)
    dm.setup("fit")
    images, text, index = next(iter(dm.train_dataloader()))
    # the loader gives stored pixels, NHWC uint8 as cached; the device-side hook makes the model's view
    assert images.shape == (16, 40, 40, 3) and images.dtype == torch.uint8
    assert text.shape == (16, dm.embed_dim) and text.dtype == torch.float16
    assert len(set(index.tolist())) == 16
    assert torch.allclose(text.float().norm(dim=1), torch.ones(16), atol=1e-2)
    # every row pairs an image with one of its own captions
    split, emb = dm.split("train2014"), dm.caption_embeddings("train2014")
    start = split.caption_start
    for row, i in enumerate(index.tolist()):
        assert any(torch.equal(text[row], emb[c]) for c in range(start[i], start[i + 1]))
    cache = np.load(image_cache.image_cache_paths(tmp_path, split, 40)[0], mmap_mode="r")
    assert torch.equal(images, torch.from_numpy(cache[index.numpy()]))
    view = dm.on_after_batch_transfer((images, text, index), 0)[0]
    assert view.shape == (16, 3, 32, 32) and torch.equal(view, images[:, 4:36, 4:36].permute(0, 3, 1, 2))
    assert len(dm.train_dataloader()) == 256 // 16
    seen = torch.cat([b[2] for b in dm.val_dataloader()])
    assert torch.equal(seen, torch.as_tensor(dm.eval_images("val"))) and len(seen) == 50
    caption_emb, caption_image = dm.retrieval_targets("val")
    assert len(caption_emb) == len(caption_image) == 250 and caption_image.max() == 49
    assert len(dm.eval_images("test")) == 96
    assert np.array_equal(dm.eval_images("val"), dm.eval_images("val"))  # fixed subset


def test_datamodule_rejects_a_crop_larger_than_the_cache(demo_root, text_model, tmp_path):
    with pytest.raises(ClipLabError, match="at most cache_image_size"):
        RetrievalData(data_root=str(demo_root), text_model=text_model, image_size=64, cache_image_size=48)


def test_unreadable_images_are_left_out_of_training_and_evaluation(demo_root, text_model, tmp_path):
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(demo_root, root)
    train, val = load_coco_split(root, "train2014"), load_coco_split(root, "val2014")
    train.image_path(3).write_bytes(b"")  # zero bytes
    val.image_path(7).unlink()  # listed in the annotations, absent on disk
    dm = RetrievalData(
        data_root=str(root),
        text_model=text_model,
        max_length=32,
        cache_dir=str(tmp_path / "c"),
        image_size=32,
        cache_image_size=40,
        batch_size=16,
        num_workers=0,
        val_images=0,
        max_bad_images=0.05,
    )
    dm.prepare_data()
    seen = torch.cat([b[2] for b in dm.train_dataloader()]).tolist()
    assert 3 not in seen and len(seen) == 255 // 16 * 16
    assert 7 not in dm.eval_images("test") and len(dm.eval_images("test")) == 95
    _, caption_image = dm.retrieval_targets("test")
    assert len(caption_image) == 95 * 5  # the absent image's captions are not in the gallery either


def test_captions_empty_dropped_any_count_any_unicode_long_ones_truncated(demo_root, text_model, tmp_path, caplog):
    import shutil

    from clip_lab.models.text import TextEncoder

    root = tmp_path / "coco"
    shutil.copytree(demo_root, root)
    ann = root / "annotations" / "captions_val2014.json"
    raw = json.loads(ann.read_text())
    first, second, third = (im["id"] for im in raw["images"][:3])
    raw["annotations"] = [a for a in raw["annotations"] if a["image_id"] not in (first, second)]
    extra = [
        (first, "   "),
        (first, ""),
        (first, "\t\n"),  # image `first` keeps no caption at all
        *[(second, f"caption {k} — ünïcödé 中文 🎉") for k in range(7)],  # seven captions
        (third, " ".join(["a red circle"] * 40)),
    ]  # far past the text tower's 32 tokens
    for k, (image, text) in enumerate(extra):
        raw["annotations"].append({"id": 90_000_000 + k, "image_id": image, "caption": text})
    ann.write_text(json.dumps(raw, ensure_ascii=False))
    with caplog.at_level("WARNING"):
        split = load_coco_split(root, "val2014")
    assert "3 empty captions" in caplog.text and split.defects == {"empty_captions": 3}
    counts = np.diff(split.caption_start)
    assert counts[0] == 0 and counts[1] == 7 and counts[2] == 6
    with caplog.at_level("WARNING"):
        emb = TextEncoder(text_model, 32).encode(split.captions)
    assert "1 of" in caplog.text and "longer than max_length=32 tokens and were truncated" in caplog.text
    assert torch.isfinite(emb).all() and len(emb) == len(split.captions)
