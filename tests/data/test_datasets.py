"""The dataset registry and its Flickr8k and Karpathy readers, on tiny files in the real formats with known answers."""

import json
import re
import shutil

import numpy as np
import pytest
from formats import GHOST, write_flickr8k, write_karpathy

from clip_lab.data import datasets
from clip_lab.data.coco import load_coco_split
from clip_lab.data.datasets import DATASETS, check_dataset_files, load_split, split_names
from clip_lab.data.synthetic import make_split
from clip_lab.errors import ClipLabError

WRITTEN = ("coco_karpathy", "flickr8k", "flickr8k_karpathy", "flickr30k")  # the Kaggle downloads: test_download_formats

KARPATHY = {"coco_karpathy": "coco", "flickr8k_karpathy": "flickr8k", "flickr30k": "flickr30k"}


def _write(dataset, root):
    return write_flickr8k(root) if dataset == "flickr8k" else write_karpathy(root, KARPATHY[dataset])


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """dataset -> (data_root, what each split must hold), written once and only read by the tests that use it."""
    roots = {d: tmp_path_factory.mktemp(d) for d in WRITTEN}
    return {d: (root, _write(d, root)) for d, root in roots.items()}


def _assert_split(split, expected, selector, name):
    images, defects = expected.of(selector)
    assert split.name == name
    assert split.annotation_file == expected.annotation_file and split.image_dir == expected.image_dir
    assert split.image_ids.tolist() == [i for i, _, _ in images]
    assert split.file_names == [f for _, f, _ in images]
    start = split.caption_start
    got = [list(zip(split.caption_ids[a:b].tolist(), split.captions[a:b])) for a, b in zip(start[:-1], start[1:])]
    assert got == [c for _, _, c in images]
    assert split.defects == defects
    assert all(split.image_path(i).is_file() for i in range(len(images)))


def test_registry_names_and_split_names():
    assert DATASETS == ("coco", *WRITTEN, "flickr8k_kaggle", "flickr30k_kaggle")  # COCO 2014 first, Kaggle's last
    assert split_names("coco") == ("train2014", "val2014", "train2017", "val2017")  # the 2014 and 2017 releases
    assert split_names("coco_karpathy") == ("train", "restval", "val", "test")
    for dataset in ("flickr8k", "flickr8k_karpathy", "flickr30k"):
        assert split_names(dataset) == ("train", "val", "test")


@pytest.mark.parametrize("dataset", WRITTEN)
def test_each_split_holds_exactly_the_expected_images_captions_ids_and_defects(written, dataset):
    root, expected = written[dataset]
    check_dataset_files(dataset, root, split_names(dataset))
    seen = {}
    for split in split_names(dataset):
        loaded = load_split(dataset, root, split)
        _assert_split(loaded, expected, split, f"{dataset}_{split}")
        seen[split] = set(loaded.image_ids.tolist())
    assert sum(map(len, seen.values())) == len(set().union(*seen.values()))  # no image in two splits


def test_karpathy_split_combinations(written):
    root, expected = written["coco_karpathy"]
    for selector in ("train+restval", "restval+train", "val+test", "train+restval+val+test"):
        _assert_split(load_split("coco_karpathy", root, selector), expected, selector, f"coco_karpathy_{selector}")
    root, expected = written["flickr30k"]
    _assert_split(load_split("flickr30k", root, "train+val"), expected, "train+val", "flickr30k_train+val")


def test_karpathy_ids_follow_file_order_so_folds_are_consecutive_blocks(written):
    root, expected = written["coco_karpathy"]
    entries = json.loads(expected.annotation_file.read_text())["images"]
    test = load_split("coco_karpathy", root, "test")
    in_file = [f"{e['filepath']}/{e['filename']}" for e in entries if e["split"] == "test"][:-1]  # last: a repeat
    assert test.file_names == in_file and (np.diff(test.image_ids) > 0).all()
    assert [entries[i]["imgid"] for i in test.image_ids] == test.image_ids.tolist()


def test_flickr8k_ids_are_global_and_the_known_defects_are_handled(written):
    root, expected = written["flickr8k"]
    splits = {s: load_split("flickr8k", root, s) for s in ("train", "val", "test")}
    token = expected.annotation_file.read_text().split("\n")
    first = {}
    for line in token:
        key, tab, _ = line.partition("\t")
        if tab and key.rpartition("#")[2].isdigit():
            first.setdefault(key.rpartition("#")[0], len(first))
    for split in splits.values():
        for image_id, name in zip(split.image_ids, split.file_names):
            # token-file images keep their order of appearance there; the two without captions come last
            assert first.get(name, image_id) == image_id and (name in first or image_id >= len(first))
        for caption_id, text in zip(split.caption_ids, split.captions):
            assert token[caption_id].rstrip().endswith(text)  # caption id = line number
    assert GHOST in first and all(GHOST not in s.file_names for s in splits.values())
    counts = np.diff(splits["train"].caption_start)
    assert 6 in counts and 0 in counts  # an image with 6 captions; a listed one with none stays as a distractor


def test_flickr8k_other_spellings_of_the_folders(tmp_path):
    expected = write_flickr8k(tmp_path, text_dir=".", image_dir="Flickr8k_Dataset", seed=1)
    assert expected.annotation_file == tmp_path / "Flickr8k.token.txt"
    for split in split_names("flickr8k"):
        _assert_split(load_split("flickr8k", tmp_path, split), expected, split, f"flickr8k_{split}")


@pytest.mark.parametrize(
    "dataset, named",
    [
        (
            "coco_karpathy",
            ["dataset_coco.json", "caption_datasets.zip", "/train2014/", "train2014.zip", "/val2014/", "val2014.zip"],
        ),
        (
            "flickr8k",
            [
                "Flickr8k.token.txt",
                "Flickr_8k.trainImages.txt",
                "Flickr_8k.devImages.txt",
                "Flickr_8k.testImages.txt",
                "Flickr8k_text/Flickr8k.token.txt",
                "Flickr8k_text.zip",
                "/Flicker8k_Dataset/",
                "/Flickr8k_Dataset/",
                "Flickr8k_Dataset.zip",
            ],
        ),
        ("flickr8k_karpathy", ["dataset_flickr8k.json", "caption_datasets.zip", "/Flicker8k_Dataset/"]),
        ("flickr30k", ["dataset_flickr30k.json", "caption_datasets.zip", "/flickr30k-images/", "DenotationGraph"]),
    ],
)
def test_missing_files_are_all_named_in_one_error(tmp_path, dataset, named):
    with pytest.raises(ClipLabError) as err:
        check_dataset_files(dataset, tmp_path, ["test"])
    msg = str(err.value)
    assert msg.startswith(f"{dataset} files missing under data_root={tmp_path}") and all(n in msg for n in named)
    with pytest.raises(ClipLabError, match="files missing"):
        load_split(dataset, tmp_path, "test")


def test_only_the_missing_ones_are_named(tmp_path):
    write_flickr8k(tmp_path)
    (tmp_path / "Flickr8k_text" / "Flickr_8k.devImages.txt").unlink()
    with pytest.raises(ClipLabError) as err:
        load_split("flickr8k", tmp_path, "train")  # every list is needed: ids depend on all three
    msg = str(err.value)
    assert "Flickr_8k.devImages.txt" in msg and "token" not in msg and "trainImages" not in msg
    write_karpathy(tmp_path / "coco")
    shutil.rmtree(tmp_path / "coco" / "train2014")
    with pytest.raises(ClipLabError, match=r"train2014/ \(images") as err:
        check_dataset_files("coco_karpathy", tmp_path / "coco", ["test"])
    assert "val2014/" not in str(err.value) and "dataset_coco.json" not in str(err.value)


def test_a_karpathy_file_of_another_dataset_is_refused(written, tmp_path):
    coco_root, expected = written["coco_karpathy"]
    (tmp_path / "flickr30k-images").mkdir()
    shutil.copy(expected.annotation_file, tmp_path / "dataset_flickr30k.json")
    with pytest.raises(ClipLabError, match="split of 'coco', not of 'flickr30k'") as err:
        load_split("flickr30k", tmp_path, "test")
    assert str(tmp_path / "dataset_flickr30k.json") in str(err.value)


@pytest.mark.parametrize(
    "content, says",
    [
        (b"<html>404</html>", "not a readable JSON file"),
        (b"\xff\xff\xff", "not a readable JSON file"),
        (b'{"dataset": "flickr30k"}', 'no "images" list'),
        (b"[1, 2]", 'no "images" list'),
        (b'{"dataset": "flickr30k", "images": [{"filename": "1.jpg", "imgid": "0", "sentences": []}]}', r"images\[0\]"),
        (
            b'{"dataset": "flickr30k", "images": [{"filename": "1.jpg", "imgid": 0, "sentences": [{"raw": "a"}]}]}',
            r"images\[0\]",
        ),
    ],
)
def test_a_broken_karpathy_file_names_itself_and_where_to_get_it(tmp_path, content, says):
    (tmp_path / "flickr30k-images").mkdir()
    (tmp_path / "dataset_flickr30k.json").write_bytes(content)
    with pytest.raises(ClipLabError, match=says) as err:
        load_split("flickr30k", tmp_path, "test")
    assert str(tmp_path / "dataset_flickr30k.json") in str(err.value) and "caption_datasets.zip" in str(err.value)


def test_a_split_with_no_image_is_refused(tmp_path):
    expected = write_karpathy(tmp_path, "flickr30k")
    raw = json.loads(expected.annotation_file.read_text())
    for entry in raw["images"]:
        entry["split"] = entry["split"].replace("val", "train")
    expected.annotation_file.write_text(json.dumps(raw))
    with pytest.raises(ClipLabError, match="no image in split 'val'"):
        load_split("flickr30k", tmp_path, "val")
    write_flickr8k(tmp_path / "f8")
    (tmp_path / "f8" / "Flickr8k_text" / "Flickr_8k.testImages.txt").write_text("\n")
    with pytest.raises(ClipLabError, match="testImages.txt lists no image"):
        load_split("flickr8k", tmp_path / "f8", "test")


def test_a_token_file_that_is_not_text_is_refused(tmp_path):
    expected = write_flickr8k(tmp_path)
    expected.annotation_file.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xff")
    with pytest.raises(ClipLabError, match="Flickr8k.token.txt is not a readable UTF-8 text file"):
        load_split("flickr8k", tmp_path, "test")


def test_unknown_dataset_or_split_lists_the_valid_ones(written, tmp_path):
    for call in (
        lambda: check_dataset_files("flickr", tmp_path, ["test"]),
        lambda: split_names("flickr"),
        lambda: load_split("Flickr30k", tmp_path, "test"),
    ):
        with pytest.raises(ClipLabError, match="unknown dataset '.*': use one of " + ", ".join(DATASETS)):
            call()
    root = written["flickr30k"][0]
    for split in ("restval", "train+train", "train+", "", "dev"):
        with pytest.raises(ClipLabError, match=re.escape(f"unknown split '{split}'") + ".*one of train, val, test"):
            load_split("flickr30k", root, split)
    with pytest.raises(ClipLabError, match="use one of train, val, test$"):
        load_split("flickr8k", written["flickr8k"][0], "train+val")  # the official lists do not combine
    with pytest.raises(ClipLabError, match="use one of train2014, val2014"):
        check_dataset_files("coco", tmp_path, ["train"])
    with pytest.raises(ClipLabError, match=r"unknown split 'val\+dev'"):  # before the missing files
        check_dataset_files("coco_karpathy", tmp_path, ["test", "val+dev"])


def test_coco_is_the_official_reader_with_bare_split_names(tmp_path):
    make_split(tmp_path, "val2014", 4, seed=3, first_image_id=7, first_ann_id=70, sides=(48, 64))
    check_dataset_files("coco", tmp_path, ["val2014"])
    ours, theirs = load_split("coco", tmp_path, "val2014"), load_coco_split(tmp_path, "val2014")
    assert ours.name == "val2014" and ours.image_ids.tolist() == [7, 8, 9, 10]
    for field in ("name", "annotation_file", "image_dir", "file_names", "captions", "defects"):
        assert getattr(ours, field) == getattr(theirs, field)
    for field in ("image_ids", "caption_ids", "caption_image"):
        assert np.array_equal(getattr(ours, field), getattr(theirs, field))
    with pytest.raises(ClipLabError, match="COCO 2014 files missing") as err:
        check_dataset_files("coco", tmp_path, ["train2014", "val2014"])
    assert "captions_train2014.json" in str(err.value) and "captions_val2014.json" not in str(err.value)
    assert datasets.load_coco_split is load_coco_split
