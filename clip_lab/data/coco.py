"""COCO-format captions -> a `CaptionedSplit` (images, captions, caption -> image index), read with pycocotools."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clip_lab.errors import ClipLabError

log = logging.getLogger(__name__)

COCO_DOWNLOAD = {
    "train2014": "http://images.cocodataset.org/zips/train2014.zip",
    "val2014": "http://images.cocodataset.org/zips/val2014.zip",
    "annotations": "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
}


@dataclass(frozen=True)
class CaptionedSplit:
    """One split: images sorted by id, captions grouped by image (so image i owns captions start[i]:start[i+1])."""

    name: str
    annotation_file: Path
    image_dir: Path
    image_ids: np.ndarray  # [n_images] int64, ascending
    file_names: list[str]  # [n_images], relative to image_dir
    caption_ids: np.ndarray  # [n_captions] int64 annotation ids
    caption_image: np.ndarray  # [n_captions] int64 index into image_ids
    captions: list[str]  # [n_captions]

    @property
    def caption_start(self) -> np.ndarray:
        """CSR offsets `[n_images + 1]`: the captions of image i are `start[i]:start[i + 1]`."""
        counts = np.bincount(self.caption_image, minlength=len(self.image_ids))
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def image_path(self, i: int) -> Path:
        return self.image_dir / self.file_names[i]


def coco_paths(data_root: str | Path, split: str) -> tuple[Path, Path]:
    """(image folder, captions json) of a COCO 2014 split, in the layout of the official zips."""
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
            missing.append(f"{ann} (captions: {COCO_DOWNLOAD['annotations']})")
    if missing:
        raise ClipLabError(
            f"COCO 2014 files missing under data_root={data_root}: " + "; ".join(missing)
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
        raise ClipLabError(f"{ann} is not a COCO captions file ({type(e).__name__}: {e}); "
                           f"re-download it from {COCO_DOWNLOAD['annotations']}") from e
    image_ids = np.array(sorted(coco.imgs), dtype=np.int64)
    position = {int(img): i for i, img in enumerate(image_ids)}
    anns = [a for a in coco.anns.values() if isinstance(a.get("caption"), str) and a["caption"].strip()]
    if len(anns) < len(coco.anns):
        log.warning("%s: %d empty or whitespace-only captions dropped", ann, len(coco.anns) - len(anns))
    orphans = [a for a in anns if a["image_id"] not in position]
    if orphans:
        raise ClipLabError(f"{ann}: {len(orphans)} captions name images that are not in its image list (e.g. "
                           f"annotation {orphans[0]['id']} -> image {orphans[0]['image_id']}); re-download it from "
                           f"{COCO_DOWNLOAD['annotations']}")
    anns = sorted(anns, key=lambda a: (position[a["image_id"]], a["id"]))
    return CaptionedSplit(
        name=split,
        annotation_file=ann,
        image_dir=image_dir,
        image_ids=image_ids,
        file_names=[coco.imgs[int(i)]["file_name"] for i in image_ids],
        caption_ids=np.array([a["id"] for a in anns], dtype=np.int64),
        caption_image=np.array([position[a["image_id"]] for a in anns], dtype=np.int64),
        captions=[a["caption"].strip() for a in anns],
    )
