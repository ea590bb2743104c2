"""The official COCO captions files (2014 and 2017 releases) -> a `CaptionedSplit`, read with pycocotools."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

from clip_lab.data.split import CaptionedSplit, build_split
from clip_lab.errors import ClipLabError

log = logging.getLogger(__name__)

COCO_DOWNLOAD = {
    "train2014": "http://images.cocodataset.org/zips/train2014.zip",
    "val2014": "http://images.cocodataset.org/zips/val2014.zip",
    "annotations2014": "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
    "train2017": "http://images.cocodataset.org/zips/train2017.zip",
    "val2017": "http://images.cocodataset.org/zips/val2017.zip",
    "annotations2017": "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
}
COCO_SPLITS = ("train2014", "val2014", "train2017", "val2017")  # 2017 re-splits the same images: 118,287 / 5,000


def annotations_download(split: str) -> str:
    """The official zip holding `captions_<split>.json`."""
    return COCO_DOWNLOAD[f"annotations{split[-4:]}"]


def coco_paths(data_root: str | Path, split: str) -> tuple[Path, Path]:
    """(image folder, captions json) of a COCO split (train2014, val2017, ...), in the layout of the official zips."""
    root = Path(data_root)
    return root / split, root / "annotations" / f"captions_{split}.json"


def check_coco_files(data_root: str | Path, splits: list[str]) -> None:
    """Stop before any work when a split's folder or captions file is missing, naming each and its download."""
    missing = []
    for split in splits:
        image_dir, ann = coco_paths(data_root, split)
        if not image_dir.is_dir():
            missing.append(f"{image_dir}/ (images: {COCO_DOWNLOAD.get(split, 'the official download page')})")
        if not ann.is_file():
            missing.append(f"{ann} (captions: {annotations_download(split)})")
    if missing:
        years = " and ".join(sorted({s[-4:] for s in splits}))
        raise ClipLabError(
            f"COCO {years} files missing under data_root={data_root}: "
            + "; ".join(missing)
            + ". Unzip the official files (https://cocodataset.org/#download) into data_root, "
            "or run `python -m clip_lab demo` for a generated dataset that needs no download"
        )


def load_coco_split(data_root: str | Path, split: str) -> CaptionedSplit:
    """Read `annotations/captions_<split>.json` with pycocotools into a `CaptionedSplit`."""
    from pycocotools.coco import COCO

    image_dir, ann = coco_paths(data_root, split)
    check_coco_files(data_root, [split])
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            coco = COCO(str(ann))
    except (ValueError, KeyError, TypeError) as e:
        raise ClipLabError(
            f"{ann} is not a COCO captions file ({type(e).__name__}: {e}); "
            f"re-download it from {annotations_download(split)}"
        ) from e
    fix = f"re-download it from {annotations_download(split)}"
    info = coco.dataset.get("info")
    description = info.get("description", "") if isinstance(info, dict) else ""
    return build_split(
        split,
        ann,
        image_dir,
        [(int(i), im["file_name"]) for i, im in coco.imgs.items()],
        [(a["id"], a["image_id"], a.get("caption")) for a in coco.anns.values()],
        fix=fix,
        description=str(description),
    )
