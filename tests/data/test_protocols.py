"""Named test protocols: folds and caption caps with known answers, protocol choice per dataset, and a fit + test of
each non-COCO dataset format end to end whose result file names its protocol and gallery."""

import json

import pytest
import torch
from cli_args import TINY_IMAGES, fit_args, job_args
from formats import write_flickr8k, write_karpathy

from clip_lab.__main__ import main
from clip_lab.data.datamodule import RetrievalData
from clip_lab.data.protocols import PROTOCOLS, resolve_protocol
from clip_lab.errors import ClipLabError
from clip_lab.eval.metrics import embedding_retrieval_metrics, folded_retrieval_metrics


def test_folds_are_galleries_of_their_own():
    eye = torch.eye(4)
    # caption 2 belongs to image 2 but looks more like image 0: a distractor only while image 0 is in its gallery
    captions = torch.stack([eye[0], eye[1], torch.nn.functional.normalize(2 * eye[0] + eye[2], dim=0), eye[3]])
    owner = torch.arange(4)
    whole = folded_retrieval_metrics(eye, captions, owner, folds=1)
    assert whole == embedding_retrieval_metrics(eye, captions, owner)
    assert whole["t2i_R@1"] == 0.75 and whole["i2t_R@1"] == 1.0
    halves = folded_retrieval_metrics(eye, captions, owner, folds=2)  # {0, 1} and {2, 3}
    assert halves["t2i_R@1"] == 1.0 and halves["t2i_MRR"] == 1.0
    assert halves["t2i_n"] == halves["i2t_n"] == 4  # counts add up over folds; rates are means
    uneven = folded_retrieval_metrics(eye, captions, owner, folds=3)  # {0}, {1}, {2, 3}
    assert uneven["t2i_R@1"] == 1.0 and uneven["t2i_n"] == 4
    with pytest.raises(ValueError, match="folds"):
        folded_retrieval_metrics(eye, captions, owner, folds=5)


def test_protocol_follows_the_dataset_and_refuses_the_wrong_one():
    assert resolve_protocol("auto", "coco_karpathy", "test").name == "coco5k"
    assert resolve_protocol("auto", "flickr30k", "test").name == "flickr1k"
    assert resolve_protocol("auto", "flickr8k", "test").name == "flickr1k"
    assert resolve_protocol("auto", "coco", "val2014").name == "val2014"
    assert resolve_protocol("auto", "coco_karpathy", "val").name == "full"
    assert resolve_protocol("coco1k", "coco_karpathy", "test").folds == 5
    assert PROTOCOLS["coco1k"].captions_per_image == PROTOCOLS["coco5k"].captions_per_image == 5
    with pytest.raises(ClipLabError, match="coco1k is defined on coco_karpathy test.*auto, flickr1k, full"):
        resolve_protocol("coco1k", "flickr30k", "test")
    with pytest.raises(ClipLabError, match="unknown protocol 'coco2k'"):
        resolve_protocol("coco2k", "coco_karpathy", "test")
    record = PROTOCOLS["coco1k"].record(4999, 24995)
    assert record["published_size"] is False and record["gallery_images_per_fold"] == 999


def test_karpathy_coco_trains_on_train_restval_validates_on_val_and_caps_test_captions(tmp_path, text_model):
    root = tmp_path / "coco"
    expected = write_karpathy(root, "coco")
    dm = RetrievalData(
        dataset="coco_karpathy",
        data_root=str(root),
        text_model=text_model,
        max_length=32,
        cache_dir=str(tmp_path / "cache"),
        image_size=32,
        cache_image_size=40,
        num_workers=0,
        train_split="train+restval",
        val_split="val",
        test_split="test",
        val_images=0,
    )
    assert dm.protocol.name == "coco5k" and dm.split_names() == ["train+restval", "val", "test"]
    assert dm.eval_split("val") == "val" and dm.eval_split("test") == "test"
    dm.prepare_data()  # image and caption caches of the three splits
    test = dm.split("test")
    assert test.name == "coco_karpathy_test"
    images, _ = expected.of("test")
    assert len(dm.eval_images("test")) == len(images)
    kept = dm.eval_captions("test")
    per_image = torch.bincount(torch.from_numpy(test.caption_image[kept]), minlength=len(images))
    full = torch.bincount(torch.from_numpy(test.caption_image), minlength=len(images))
    assert per_image.max() == 5 and full.max() > 5  # the image with six captions keeps its first five
    assert torch.equal(per_image, full.clamp(max=5))
    first_five = [j for j in range(len(test.captions)) if j - test.caption_start[test.caption_image[j]] < 5]
    assert kept.tolist() == first_five


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["flickr8k", "flickr30k"])
def test_fit_and_test_on_a_flickr_format_end_to_end(dataset, tmp_path, text_model):
    root = tmp_path / dataset
    expected = write_flickr8k(root) if dataset == "flickr8k" else write_karpathy(root, "flickr30k")
    args = fit_args(
        root,
        tmp_path,
        "r",
        data__dataset=dataset,
        data__text_model=text_model,
        data__train_split="train",
        data__val_split="val",
        data__test_split="test",
        **TINY_IMAGES,
        data__batch_size=4,
        trainer__max_epochs=1,
    )
    assert main(args) == 0
    run = tmp_path / "results" / "r"
    assert main(job_args("test", run, "best.ckpt")) == 0
    result = json.loads((run / "test_metrics.json").read_text())
    images, _ = expected.of("test")
    assert result["dataset"] == dataset and result["split"] == "test"
    protocol = result["protocol"]
    assert protocol["name"] == "flickr1k" and protocol["gallery_images"] == len(images)
    assert protocol["gallery_captions"] == sum(min(5, len(caps)) for _, _, caps in images)
    assert protocol["published_size"] is False  # a 1k protocol on a handful of images says so
    assert result["metrics"]["n_images"] == len(images)


def test_a_gallery_off_the_published_size_says_why():
    flickr = PROTOCOLS["flickr1k"]
    subset = flickr.record(150, 750, split_images=150)
    assert subset["published_size"] is False and subset["unreadable_skipped"] == 0
    assert subset["size_note"] == (
        "the test split has 150 images, not the 1,000 of protocol flickr1k (a subset of "
        "the dataset, another split, or other data in its layout)"
    )
    skipped = flickr.record(997, 4985, split_images=1000, unreadable=3)
    assert skipped["size_note"] == "3 unreadable images of the split were skipped"
    both = flickr.record(147, 735, split_images=150, unreadable=3)
    assert both["size_note"].startswith("the test split has 150 images") and "3 unreadable" in both["size_note"]
    assert flickr.record(1000, 5000, split_images=1000)["size_note"] is None
    assert PROTOCOLS["full"].record(10, 50, split_images=10)["published_size"] is None
