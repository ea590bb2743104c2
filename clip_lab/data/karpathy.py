"""Karpathy's split files (dataset_coco.json, dataset_flickr8k.json, dataset_flickr30k.json) -> a `CaptionedSplit`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from clip_lab.data.split import CaptionedSplit, build_split
from clip_lab.errors import ClipLabError

KARPATHY_URL = "https://cs.stanford.edu/people/karpathy/deepimagesent/"
KARPATHY_FIX = f"download caption_datasets.zip from {KARPATHY_URL} and unzip its dataset_*.json into data_root"
# the "split" values each file uses; COCO's "restval" is the part of val2014 outside its 5k val and 5k test images
KARPATHY_SPLITS = {
    "coco": ("train", "restval", "val", "test"),
    "flickr8k": ("train", "val", "test"),
    "flickr30k": ("train", "val", "test"),
}


def split_selector(split: str, valid: Sequence[str], what: str) -> tuple[str, ...]:
    """The names that a selector joins with "+" ("train+restval" -> ("train", "restval")), each one of `valid`.

    `what` names the dataset in the error an unknown or repeated name raises.
    """
    parts = tuple(split.split("+"))
    if any(p not in valid for p in parts) or len(set(parts)) < len(parts):
        raise ClipLabError(
            f"unknown split {split!r} for {what}: use one of {', '.join(valid)}, or several joined "
            f"with '+' (e.g. '{valid[0]}+{valid[1]}')"
        )
    return parts


def read_karpathy_json(path: str | Path, dataset: str) -> list:
    """The "images" list of a Karpathy split file, after checking that the file is one, and of `dataset`."""
    try:
        data = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as e:  # JSON and UTF-8 decoding errors are ValueErrors
        raise ClipLabError(f"{path} is not a readable JSON file ({type(e).__name__}: {e}); {KARPATHY_FIX}") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ClipLabError(f'{path} has no "images" list, so it is not one of Karpathy\'s split files; {KARPATHY_FIX}')
    if data.get("dataset") != dataset:
        raise ClipLabError(
            f"{path} holds Karpathy's split of {data.get('dataset')!r}, not of {dataset!r}: point "
            f"data_root at the folder holding dataset_{dataset}.json ({KARPATHY_FIX})"
        )
    return data["images"]


def _image(entry: object, k: int, path: Path, dataset: str) -> tuple[int, str, list[tuple[int, object]]]:
    """(imgid, file name relative to the image folder, [(sentid, raw)]) of entry k of the "images" list."""
    keys = ("filepath", "filename") if dataset == "coco" else ("filename",)
    sentences = entry.get("sentences", []) if isinstance(entry, dict) else None
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("imgid"), int)
        or not all(isinstance(entry.get(key), str) for key in keys)
        or not isinstance(sentences, list)
        or not all(isinstance(s, dict) and isinstance(s.get("sentid"), int) for s in sentences)
    ):
        raise ClipLabError(
            f"{path}: images[{k}] lacks an integer imgid, a string {' and '.join(keys)} or sentences "
            f"with integer sentids, so this is not one of Karpathy's split files; {KARPATHY_FIX}"
        )
    # a missing or non-string raw is passed on as is: build_split counts it with the empty captions
    return entry["imgid"], "/".join(entry[key] for key in keys), [(s["sentid"], s.get("raw")) for s in sentences]


def read_karpathy_images(path: str | Path, dataset: str) -> tuple[list[tuple[str, int, str, list]], Counter]:
    """Every usable image of the file as (split, imgid, file name, [(sentid, raw)]), and what was dropped.

    The first entry of an image (by imgid or by file) wins and so does the first sentence with a sentid: a later
    one is dropped and counted (duplicate_images, duplicate_captions); an unknown "split" value drops its image
    (unknown_split_images). These counts describe the whole file, whichever split is read.
    """
    defects: Counter = Counter()
    images, seen_ids, seen_files, seen_sentences = [], set(), set(), set()
    for k, entry in enumerate(read_karpathy_json(path, dataset)):
        image_id, file_name, sentences = _image(entry, k, Path(path), dataset)
        if image_id in seen_ids or file_name in seen_files:
            defects["duplicate_images"] += 1
            continue
        seen_ids.add(image_id)
        seen_files.add(file_name)
        kept = []
        for sentid, raw in sentences:
            if sentid in seen_sentences:
                defects["duplicate_captions"] += 1
            else:
                seen_sentences.add(sentid)
                kept.append((sentid, raw))
        if entry.get("split") not in KARPATHY_SPLITS[dataset]:
            defects["unknown_split_images"] += 1
            continue
        images.append((entry["split"], image_id, file_name, kept))
    return images, defects


def load_karpathy_split(
    annotation_file: str | Path,
    image_dir: str | Path,
    dataset: str = "coco",
    split: str = "test",
    name: str | None = None,
) -> CaptionedSplit:
    """One split selector ("test", "train+restval") of a Karpathy split file of `dataset` as a `CaptionedSplit`.

    Image id = imgid (the entry's position in the file, so ascending ids keep the file order that the COCO 1k folds
    are cut from), caption id = sentid, caption = raw. Images of the split with no sentence stay in it (gallery
    distractors) and are counted in images_without_captions. `name` defaults to `karpathy_<dataset>_<split>`.
    """
    parts = split_selector(split, KARPATHY_SPLITS[dataset], f"Karpathy's {dataset} split file")
    images, defects = read_karpathy_images(annotation_file, dataset)
    chosen = [im for im in images if im[0] in parts]
    if not chosen:
        found = Counter(im[0] for im in images)
        raise ClipLabError(
            f"{annotation_file} has no image in split {split!r} (it has {dict(found) or 'none'}); {KARPATHY_FIX}"
        )
    defects["images_without_captions"] = sum(1 for im in chosen if not im[3])
    return build_split(
        name or f"karpathy_{dataset}_{split}",
        Path(annotation_file),
        Path(image_dir),
        [(image_id, file_name) for _, image_id, file_name, _ in chosen],
        [(sentid, image_id, raw) for _, image_id, _, sentences in chosen for sentid, raw in sentences],
        dict(defects),
        fix=KARPATHY_FIX,
    )
