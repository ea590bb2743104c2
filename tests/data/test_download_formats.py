"""Datasets as users download them (COCO 2017 ...): each read through the same split type and registry, written here
in the real layout with its quirks, fitted and tested end to end on tiny settings."""

import json

import pytest
from cli_args import TINY_IMAGES, fit_args
from formats import write_coco2017

from clip_lab.__main__ import main
from clip_lab.data.datasets import load_split
from clip_lab.errors import ClipLabError
from clip_lab.files import CONFIGS
from clip_lab.jobs import prepare


def tiny(root, tmp_path, text_model, run, *overlays, **options):
    """fit arguments: the base and demo configs, the dataset's overlays, tiny images and batches."""
    return fit_args(
        root,
        tmp_path,
        run,
        *[f"datasets/{o}" for o in overlays],
        data__text_model=text_model,
        **TINY_IMAGES,
        data__batch_size=8,
        data__val_images=6,
        trainer__max_epochs=1,
        **options,
    )


@pytest.mark.slow
def test_coco2017_is_read_fitted_and_tested_under_its_protocol(tmp_path, text_model):
    root = write_coco2017(tmp_path / "coco")
    split = load_split("coco", root, "val2017")
    assert split.name == "val2017" and len(split.image_ids) == 12 and split.file_names[0] == "000000500001.jpg"
    assert split.description == "COCO 2017 Dataset"
    assert main(tiny(root, tmp_path, text_model, "c17", "coco2017.yaml")) == 0
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
    with pytest.raises(
        ClipLabError,
        match=r"COCO 2017 files missing .*captions_val2017.json \(captions: "
        r"http://images.cocodataset.org/annotations/annotations_trainval2017.zip\)",
    ):
        load_split("coco", root, "val2017")


def refused_as_another_layout(dataset, root, holds, config):
    """Reading `root` as `dataset` stops, naming what it holds and the overlay configs/datasets/`config` for it."""
    with pytest.raises(
        ClipLabError,
        match=rf"holds {holds} \(read with -c configs/datasets/{config}\), not the files data.dataset={dataset}",
    ):
        load_split(dataset, root, "test")


def test_another_known_layout_is_named_with_what_reads_it(tmp_path, run_args, capsys):
    from formats import write_flickr8k

    coco2017 = write_coco2017(tmp_path / "coco")
    args = ["fit", "-c", str(CONFIGS / "coco.yaml"), *run_args(coco2017, tmp_path)]  # COCO 2014 configured
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert err == [
        f"error: data_root={coco2017} holds COCO 2017 (read with -c configs/datasets/coco2017.yaml), not "
        "the files data.dataset=coco with splits train2014, val2014 needs"
    ]
    flickr = tmp_path / "flickr"
    write_flickr8k(flickr)
    refused_as_another_layout("flickr30k", flickr, "the official Flickr8k files", "flickr8k.yaml")
    with pytest.raises(ClipLabError, match="flickr30k files missing"):  # nothing known there: the missing files
        load_split("flickr30k", tmp_path / "empty", "test")


def kept(split):
    """{image file: [its captions]} of a split."""
    out = {}
    for c, i in zip(split.captions, split.caption_image):
        out.setdefault(split.file_names[i], []).append(c)
    return out


def test_kaggle_flickr8k_without_lists_gets_a_seeded_split_that_says_so(tmp_path):
    from formats import write_kaggle_flickr8k

    root = tmp_path / "k8"
    written = write_kaggle_flickr8k(root)
    splits = {s: load_split("flickr8k_kaggle", root, s) for s in ("train", "val", "test")}
    assert [len(splits[s].file_names) for s in ("train", "val", "test")] == [18, 3, 3]  # 1,000 of 8,091 each, scaled
    assert set().union(*(kept(s) for s in splits.values())) == set(written["captions"])  # every image once
    for split in splits.values():
        assert kept(split) == {n: written["captions"][n] for n in split.file_names}  # commas, CRLF: as written
        assert split.defects == {"malformed_rows": 1, "blank_lines": 1}
        assert split.origin.startswith("a seeded split (data.split_seed 0) of the 24 images: 18 / 3 / 3")
    again = load_split("flickr8k_kaggle", root, "test")
    other = load_split("flickr8k_kaggle", root, "test", split_seed=1)
    assert again.file_names == splits["test"].file_names and other.file_names != again.file_names


@pytest.mark.parametrize("lists", ["official", "karpathy"])
def test_kaggle_flickr8k_takes_the_split_lists_beside_it(tmp_path, lists):
    from formats import write_kaggle_flickr8k

    root = tmp_path / "k8"
    written = write_kaggle_flickr8k(root, lists=lists)
    for s, names in written["lists"].items():
        split = load_split("flickr8k_kaggle", root, s)
        assert split.file_names == sorted(names, key=list(written["captions"]).index)  # by first appearance
        assert ("official Flickr8k split lists" if lists == "official" else "Karpathy's split") in split.origin


def test_kaggle_flickr30k_rows_are_repaired_or_counted(tmp_path):
    from formats import write_kaggle_flickr30k

    root = tmp_path / "k30"
    written = write_kaggle_flickr30k(root)
    splits = [load_split("flickr30k_kaggle", root, s) for s in ("train", "val", "test")]
    assert {n: c for s in splits for n, c in kept(s).items()} == written["captions"]  # quotes kept, the joined row too
    assert splits[0].defects == {"repaired_rows": 1, "malformed_rows": 1}
    assert splits[0].image_dir == root / "flickr30k_images" / "flickr30k_images"


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["flickr8k_kaggle", "flickr30k_kaggle"])
def test_kaggle_downloads_fit_and_test_end_to_end(tmp_path, text_model, dataset):
    from formats import write_kaggle_flickr8k, write_kaggle_flickr30k

    from clip_lab.data import image_cache

    root = tmp_path / "data"
    (write_kaggle_flickr8k if dataset == "flickr8k_kaggle" else write_kaggle_flickr30k)(root)
    assert main(tiny(root, tmp_path, text_model, "k", f"{dataset}.yaml")) == 0
    run = tmp_path / "results" / "k"
    assert main(["test", "-c", str(run / "config.yaml")]) == 0
    result = json.loads((run / "test_metrics.json").read_text())
    held = 3 if dataset == "flickr8k_kaggle" else 1  # 1,000 of 8,091 / 31,783 each, scaled to 24 images
    assert result["protocol"]["name"] == "flickr1k" and result["metrics"]["n_images"] == held
    assert result["split_origin"].startswith("a seeded split")
    lists = json.loads((run / "split_lists.json").read_text())
    test = load_split(dataset, root, "test")
    assert lists["images"]["test"] == test.file_names and lists["origin"] == result["split_origin"]
    # grayscale, CMYK, progressive and EXIF-rotated JPEGs all decode: nothing skipped
    for s in ("train", "val", "test"):
        assert len(image_cache.bad_image_indices(tmp_path / "cache", load_split(dataset, root, s), 40)) == 0


def test_kaggle_files_under_another_config_are_named(tmp_path):
    from formats import write_kaggle_flickr8k

    root = tmp_path / "k8"
    write_kaggle_flickr8k(root)
    refused_as_another_layout("flickr8k", root, "Kaggle's Flickr8k", "flickr8k_kaggle.yaml")


def test_hf_parquet_of_flickr30k_is_converted_once_into_the_karpathy_layout(tmp_path, caplog):
    from formats import write_hf_parquet

    source, out = tmp_path / "hf", tmp_path / "flickr30k"
    truth = write_hf_parquet(source, "flickr30k")
    assert main(["prepare", "--parquet", str(source), "--dataset", "flickr30k", "--out", str(out)]) == 0
    ann = json.loads((out / "dataset_flickr30k.json").read_text())
    assert ann["clip_lab_defects"] == {"rows_without_image_or_captions": 1}
    for s in ("train", "val", "test"):
        split = load_split("flickr30k", out, s)
        expected = {m: t["captions"] for m, t in truth.items() if t["split"] == s}
        assert kept(split) == expected
        for name in split.file_names:  # the dataset's own bytes, not re-encoded
            assert (out / "flickr30k-images" / name).read_bytes() == truth[name]["bytes"]
    stamp = (out / "dataset_flickr30k.json").stat().st_mtime_ns
    assert main(["prepare", "--parquet", str(source), "--dataset", "flickr30k", "--out", str(out)]) == 0
    assert (out / "dataset_flickr30k.json").stat().st_mtime_ns == stamp and "already converted" in caplog.text


@pytest.mark.slow
def test_hf_parquet_of_flickr8k_with_numbered_captions_and_splits_by_shard_name(tmp_path, text_model):
    from formats import write_hf_parquet

    source, out = tmp_path / "hf", tmp_path / "flickr8k"
    truth = write_hf_parquet(source, "flickr8k")
    assert main(["prepare", "--parquet", str(source), "--dataset", "flickr8k", "--out", str(out)]) == 0
    by_bytes = {t["bytes"]: t for t in truth.values()}
    for s in ("train", "val", "test"):
        split = load_split("flickr8k_karpathy", out, s)
        assert len(split.file_names) == sum(t["split"] == s for t in truth.values())
        for name, caps in kept(split).items():
            t = by_bytes[(out / "Flicker8k_Dataset" / name).read_bytes()]
            assert t["split"] == s and caps == t["captions"]
    assert main(tiny(out, tmp_path, text_model, "hf8", "flickr8k.yaml", data__dataset="flickr8k_karpathy")) == 0
    run = tmp_path / "results" / "hf8"
    assert main(["test", "-c", str(run / "config.yaml")]) == 0
    assert json.loads((run / "test_metrics.json").read_text())["metrics"]["n_images"] == 4


def test_parquet_shards_as_data_root_say_to_convert_them(tmp_path):
    from formats import write_hf_parquet

    write_hf_parquet(tmp_path / "hf", "flickr30k")
    with pytest.raises(
        ClipLabError,
        match=r"holds Hugging Face parquet shards \(convert once with python -m clip_lab "
        r"prepare --parquet .*hf --dataset <flickr8k\|flickr30k\|coco>",
    ):
        load_split("flickr30k", tmp_path / "hf", "test")
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "bad").mkdir()
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "bad" / "train-0.parquet")
    with pytest.raises(ClipLabError, match=r"train-0.parquet: no image column .* among its columns text"):
        prepare.main(["--parquet", str(tmp_path / "bad"), "--dataset", "flickr30k", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()  # nothing half-written
