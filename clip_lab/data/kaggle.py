"""Kaggle's Flickr8k (`Images/` + `captions.txt`) and Flickr30k (`flickr30k_images/` + `results.csv`) -> a split.

Neither download ships split lists. A split comes from the official Flickr8k lists or Karpathy's json when they lie
beside the files, else from a seeded split of the images (`SplitChoice` says which, and what it holds).
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clip_lab.data import flickr8k
from clip_lab.data.split import CaptionedSplit, build_split
from clip_lab.errors import ClipLabError

SPLITS = ("train", "val", "test")
KAGGLE = {
    "flickr8k": "https://www.kaggle.com/datasets/adityajn105/flickr8k",
    "flickr30k": "https://www.kaggle.com/datasets/hsankesara/flickr-image-dataset",
}
HELD_OUT = {"flickr8k": 1000, "flickr30k": 1000}  # val and test images each in the full set, as Karpathy's splits
FULL_SIZE = {"flickr8k": 8091, "flickr30k": 31783}
Records = list[tuple[int, str, str]]  # (row number, image file name, caption)
SEEDED = "a seeded split"  # how a split's origin begins when clip_lab drew it (its image lists then go to results)


def _text(path: Path, dataset: str) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ClipLabError(
            f"{path} is not a readable UTF-8 text file ({type(e).__name__}: {e}); re-download it ({KAGGLE[dataset]})"
        ) from e


def read_flickr8k_captions(path: str | Path) -> tuple[Records, Counter]:
    """`captions.txt`: a CSV with the header `image,caption`, captions quoted when they hold commas, about five rows
    per image. Rows without exactly an image and a caption are skipped (malformed_rows), blank ones too
    (blank_lines); CRLF line ends are read as any others. Row number = caption id."""
    path = Path(path)
    rows = csv.reader(io.StringIO(_text(path, "flickr8k"), newline=""))
    header = [h.strip().lower() for h in next(rows, [])]
    if header != ["image", "caption"]:
        raise ClipLabError(
            f"{path}: the header is {','.join(header) or 'missing'}, not image,caption, so this is not "
            f"Kaggle's Flickr8k captions.txt; re-download it ({KAGGLE['flickr8k']})"
        )
    records, defects = [], Counter()
    for number, row in enumerate(rows, start=1):
        if not any(cell.strip() for cell in row):
            defects["blank_lines"] += 1
        elif len(row) != 2 or not row[0].strip():
            defects["malformed_rows"] += 1
        else:
            records.append((number, row[0].strip(), row[1]))
    return records, defects


FLICKR30K_ROW = re.compile(r"\s*(\d+)\s+(.*)", re.S)  # "4 A dog runs ...": the number and comment a "|" should part


def read_flickr30k_results(path: str | Path) -> tuple[Records, Counter]:
    """`results.csv`: `image_name| comment_number| comment`, `|`-separated with spaces, no quoting (a comment's
    quotes are its own). A row whose comment number and comment lost their `|` (one in the Kaggle file) is repaired
    (repaired_rows); other rows without three fields are skipped (malformed_rows), blank ones too (blank_lines)."""
    path = Path(path)
    lines = _text(path, "flickr30k").splitlines()
    header = [h.strip() for h in (lines[0] if lines else "").split("|")]
    if header != ["image_name", "comment_number", "comment"]:
        raise ClipLabError(
            f"{path}: the header is {'|'.join(header) or 'missing'}, not image_name| comment_number| "
            f"comment, so this is not Kaggle's Flickr30k results.csv; re-download it "
            f"({KAGGLE['flickr30k']})"
        )
    records, defects = [], Counter()
    for number, line in enumerate(lines[1:], start=1):
        fields = line.split("|", 2)
        if not line.strip():
            defects["blank_lines"] += 1
            continue
        if len(fields) == 2 and (joined := FLICKR30K_ROW.fullmatch(fields[1])):
            fields = [fields[0], *joined.groups()]
            defects["repaired_rows"] += 1
        if len(fields) != 3 or not fields[0].strip() or not fields[1].strip().isdigit():
            defects["malformed_rows"] += 1
            continue
        records.append((number, fields[0].strip(), fields[2]))
    return records, defects


@dataclass(frozen=True)
class SplitChoice:
    """Which images each split holds, and where that came from (`source`: a sentence for results and reports)."""

    members: dict[str, list[str]]
    source: str
    seeded: bool
    defects: Counter


def choose_splits(dataset: str, root: Path, images: list[str], seed: int) -> SplitChoice:
    """The official Flickr8k lists (root or `Flickr8k_text/`), else Karpathy's `dataset_<dataset>.json` in root, else a
    seeded split: `HELD_OUT` images each for val and test (scaled to the set's size when it is smaller than the
    full download), the rest for training."""
    if dataset == "flickr8k":
        for folder in (root, root / "Flickr8k_text"):
            lists = {s: folder / f for s, f in flickr8k.SPLIT_LISTS.items()}
            if all(p.is_file() for p in lists.values()):
                members, defects = flickr8k.read_split_lists(lists)
                return SplitChoice(members, f"the official Flickr8k split lists in {folder}", False, defects)
    karpathy_file = root / f"dataset_{dataset}.json"
    if karpathy_file.is_file():
        from clip_lab.data.karpathy import read_karpathy_images

        entries, defects = read_karpathy_images(karpathy_file, dataset)
        members = {s: [name for split, _, name, _ in entries if split == s] for s in SPLITS}
        return SplitChoice(members, f"Karpathy's split {karpathy_file}", False, defects)
    order = sorted(images)
    held = (
        max(1, round(HELD_OUT[dataset] * len(order) / FULL_SIZE[dataset]))
        if len(order) < FULL_SIZE[dataset]
        else HELD_OUT[dataset]
    )
    if len(order) < 3 or 2 * held >= len(order):
        raise ClipLabError(
            f"{len(order)} images are too few for a train / val / test split; add split lists "
            "(Karpathy's dataset json) beside the captions file"
        )
    shuffled = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    members = {"val": shuffled[:held], "test": shuffled[held : 2 * held], "train": shuffled[2 * held :]}
    return SplitChoice(
        members,
        f"{SEEDED} (data.split_seed {seed}) of the {len(order):,} images: "
        f"{len(members['train']):,} / {held:,} / {held:,}",
        True,
        Counter(),
    )


def load_kaggle_split(
    dataset: str, captions_file: Path, image_dir: Path, root: Path, split: str, name: str, seed: int = 0
) -> CaptionedSplit:
    """Split "train", "val" or "test" of a Kaggle Flickr download. Image id = order of first appearance in the captions
    file; caption id = its row; `origin` = where the split's images were chosen. Captioned images in no chosen split
    are dropped (images_in_no_split); listed images without captions stay as gallery distractors
    (images_without_captions)."""
    if split not in SPLITS:
        raise ClipLabError(f"unknown split {split!r} of {dataset}: use one of {', '.join(SPLITS)}")
    reader = read_flickr8k_captions if dataset == "flickr8k" else read_flickr30k_results
    records, defects = reader(captions_file)
    ids: dict[str, int] = {}
    for _, image, _ in records:
        ids.setdefault(image, len(ids))
    choice = choose_splits(dataset, root, list(ids), seed)
    defects.update(choice.defects)
    chosen = {n for names in choice.members.values() for n in names}
    defects["images_in_no_split"] = sum(1 for image in ids if image not in chosen)
    for s in SPLITS:
        for image in choice.members[s]:
            ids.setdefault(image, len(ids))
    members = choice.members[split]
    if not members:
        raise ClipLabError(f"{split} holds no image by {choice.source}")
    wanted = set(members)
    defects["images_without_captions"] = len(wanted - {image for _, image, _ in records})
    fix = f"re-download it ({KAGGLE[dataset]})"
    return build_split(
        name,
        captions_file,
        image_dir,
        [(ids[n], n) for n in members],
        [(number, ids[image], text) for number, image, text in records if image in wanted],
        dict(defects),
        fix=fix,
        origin=choice.source,
    )
