"""Datasets as users download them (COCO 2017 ...): each read through the same split type and registry, written here
in the real layout with its quirks, fitted and tested end to end on tiny settings."""

import json
from pathlib import Path

import pytest

from clip_lab.__main__ import main
from clip_lab.data.datasets import load_split
from clip_lab.errors import ClipLabError
from formats import write_coco2017

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny(root, tmp_path, text_model, *overlays):
    """fit arguments: the base and demo configs, the dataset's overlays, tiny images and batches."""
    return ["fit", "-c", str(CONFIGS / "coco.yaml"), "-c", str(CONFIGS / "demo.yaml"),
            *[a for o in overlays for a in ("-c", str(CONFIGS / "datasets" / o))],
            "--results_dir", str(tmp_path / "results"), "--data.data_root", str(root), "--data.text_model", text_model,
            "--data.cache_dir", str(tmp_path / "cache"), "--data.num_workers", "0", "--data.image_size", "32",
            "--data.cache_image_size", "40", "--data.batch_size", "8", "--data.val_images", "6",
            "--trainer.max_epochs", "1"]


def test_coco2017_is_read_fitted_and_tested_under_its_protocol(tmp_path, text_model):
    root = write_coco2017(tmp_path / "coco")
    split = load_split("coco", root, "val2017")
    assert split.name == "val2017" and len(split.image_ids) == 12 and split.file_names[0] == "000000500001.jpg"
    assert split.description == "COCO 2017 Dataset"
    assert main([*tiny(root, tmp_path, text_model, "coco2017.yaml"), "--run", "c17"]) == 0
    run = tmp_path / "results" / "c17"
    assert main(["test", "-c", str(run / "config.yaml")]) == 0
    result = json.loads((run / "test_metrics.json").read_text())
    assert result["split"] == "val2017" and result["protocol"]["name"] == "val2017"
    assert result["metrics"]["n_images"] == 12 and result["metrics"]["n_captions"] == 60
    assert "the test split has 12 images, not the 5,000 of protocol val2017" in result["protocol"]["size_note"]
    stats = json.loads((run / "run_stats.json").read_text())
    assert stats["data"]["title"] == "MS COCO 2017" and stats["data"]["train_images"] == 24


def test_missing_coco2017_files_name_the_2017_downloads(tmp_path):
    root = write_coco2017(tmp_path / "coco")
    (root / "annotations" / "captions_val2017.json").unlink()
    with pytest.raises(ClipLabError, match=r"COCO 2017 files missing .*captions_val2017.json \(captions: "
                                           r"http://images.cocodataset.org/annotations/annotations_trainval2017.zip\)"):
        load_split("coco", root, "val2017")


def test_another_known_layout_is_named_with_what_reads_it(tmp_path, run_args, capsys):
    from formats import write_flickr8k

    coco2017 = write_coco2017(tmp_path / "coco")
    args = ["fit", "-c", str(CONFIGS / "coco.yaml"), *run_args(coco2017, tmp_path)]  # COCO 2014 configured
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert err == [f"error: data_root={coco2017} holds COCO 2017 (read with -c configs/datasets/coco2017.yaml), not "
                   "the files data.dataset=coco with splits train2014, val2014 needs"]
    flickr = tmp_path / "flickr"
    write_flickr8k(flickr)
    with pytest.raises(ClipLabError, match=r"holds the official Flickr8k files \(read with -c "
                                           r"configs/datasets/flickr8k.yaml\), not the files data.dataset=flickr30k"):
        load_split("flickr30k", flickr, "test")
    with pytest.raises(ClipLabError, match="flickr30k files missing"):  # nothing known there: the missing files
        load_split("flickr30k", tmp_path / "empty", "test")
