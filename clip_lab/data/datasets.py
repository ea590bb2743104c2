"""The dataset registry: names, split names, where each dataset's files lie under data_root, and `load_split`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from clip_lab.data import flickr8k, kaggle, karpathy
from clip_lab.data.coco import COCO_DOWNLOAD, COCO_SPLITS, check_coco_files, load_coco_split
from clip_lab.data.split import CaptionedSplit
from clip_lab.errors import ClipLabError

DATASETS: tuple[str, ...] = (
    "coco",
    "coco_karpathy",
    "flickr8k",
    "flickr8k_karpathy",
    "flickr30k",
    "flickr8k_kaggle",
    "flickr30k_kaggle",
)
KAGGLE = {"flickr8k_kaggle": "flickr8k", "flickr30k_kaggle": "flickr30k"}  # -> kaggle.py's dataset
KARPATHY = {"coco_karpathy": "coco", "flickr8k_karpathy": "flickr8k", "flickr30k": "flickr30k"}  # -> file's "dataset"
KARPATHY_COCO_FOLDERS = ("train2014", "val2014")  # Karpathy's COCO split names files of the 2014 release
FLICKR8K_IMAGES = ("Flicker8k_Dataset", "Flickr8k_Dataset")  # the official zip's spelling, then the corrected one
FLICKR8K_TEXT = (".", "Flickr8k_text")  # Flickr8k_text.zip unzipped into data_root, or into its own folder
KARPATHY_SOURCE = f"Karpathy's splits: caption_datasets.zip from {karpathy.KARPATHY_URL}"
FLICKR8K_TEXT_SOURCE = f"Flickr8k_text.zip: {flickr8k.FLICKR8K_DOWNLOAD['text']}"
FLICKR8K_IMAGES_SOURCE = f"images: {flickr8k.FLICKR8K_DOWNLOAD['images']}"
FLICKR30K_SOURCE = "images: flickr30k-images.tar.gz, via the form at https://shannon.cs.illinois.edu/DenotationGraph/"


TITLES = {
    "coco": "MS COCO 2014",
    "coco_karpathy": "MS COCO 2014 (Karpathy's splits)",
    "flickr8k": "Flickr8k",
    "flickr8k_karpathy": "Flickr8k (Karpathy's splits)",
    "flickr30k": "Flickr30k (Karpathy's splits)",
    "flickr8k_kaggle": "Flickr8k (Kaggle's download)",
    "flickr30k_kaggle": "Flickr30k (Kaggle's download)",
}
DEMO_DESCRIPTION = "clip_lab generated demo data"  # how synthetic.py's captions json begins its info.description


def data_title(dataset: str, description: str = "", split: str = "") -> str:
    """What a report calls the data (`split`: one of it, which names the COCO release): the dataset's name, or the
    demo's when its files say they are generated."""
    if description.startswith(DEMO_DESCRIPTION):
        return "clip_lab's generated demo data (COCO 2014 layout)"
    if dataset == "coco" and split.endswith("2017"):
        return "MS COCO 2017"
    return TITLES.get(dataset, dataset)


class _Need(NamedTuple):
    """A file or folder a dataset needs: where it may lie (first found wins) and where to get it."""

    paths: tuple[Path, ...]
    source: str
    folder: bool = False

    def found(self) -> Path | None:
        return next((p for p in self.paths if (p.is_dir() if self.folder else p.is_file())), None)

    def describe(self) -> str:
        return " or ".join(f"{p}{'/' if self.folder else ''}" for p in self.paths) + f" ({self.source})"


def _checked(dataset: str) -> str:
    if dataset not in DATASETS:
        raise ClipLabError(f"unknown dataset {dataset!r}: use one of {', '.join(DATASETS)}")
    return dataset


def split_names(dataset: str) -> tuple[str, ...]:
    """The valid single split names of `dataset` (Karpathy datasets also take several joined with "+")."""
    if _checked(dataset) == "coco":
        return COCO_SPLITS
    if dataset == "flickr8k":
        return flickr8k.FLICKR8K_SPLITS
    if dataset in KAGGLE:
        return kaggle.SPLITS
    return karpathy.KARPATHY_SPLITS[KARPATHY[dataset]]


def check_split_name(dataset: str, split: str) -> None:
    """Stop with the valid names unless `split` names a split of `dataset` (Karpathy: several joined with "+")."""
    if dataset in KARPATHY:
        karpathy.split_selector(split, split_names(dataset), f"dataset {dataset!r}")
    elif split not in split_names(dataset):
        raise ClipLabError(
            f"unknown split {split!r} for dataset {dataset!r}: use one of {', '.join(split_names(dataset))}"
        )


def _needs(dataset: str, root: Path) -> dict[str, _Need]:
    """What a non-COCO dataset needs under `root`, by role ("annotations", "images", the Flickr8k split lists)."""
    flickr8k_images = _Need(tuple(root / d for d in FLICKR8K_IMAGES), FLICKR8K_IMAGES_SOURCE, folder=True)
    if dataset == "flickr8k":
        files = {"annotations": flickr8k.TOKEN_FILE, **flickr8k.SPLIT_LISTS}
        text = {
            role: _Need(tuple(root / d / f for d in FLICKR8K_TEXT), FLICKR8K_TEXT_SOURCE) for role, f in files.items()
        }
        return {**text, "images": flickr8k_images}
    if dataset == "flickr8k_kaggle":
        source = f"Kaggle's Flickr8k: {kaggle.KAGGLE['flickr8k']}"
        return {
            "annotations": _Need((root / "captions.txt",), source),
            "images": _Need((root / "Images",), source, folder=True),
        }
    if dataset == "flickr30k_kaggle":  # the zip nests the images one folder deeper, beside results.csv
        source = f"Kaggle's Flickr30k: {kaggle.KAGGLE['flickr30k']}"
        return {
            "annotations": _Need((root / "results.csv", root / "flickr30k_images" / "results.csv"), source),
            "images": _Need(
                (root / "flickr30k_images" / "flickr30k_images", root / "flickr30k_images"), source, folder=True
            ),
        }
    annotations = _Need((root / f"dataset_{KARPATHY[dataset]}.json",), KARPATHY_SOURCE)
    if dataset == "coco_karpathy":  # train comes from train2014; restval, val and test from val2014
        folders = {s: _Need((root / s,), f"images: {COCO_DOWNLOAD[s]}", folder=True) for s in KARPATHY_COCO_FOLDERS}
        return {"annotations": annotations, **folders}
    if dataset == "flickr8k_karpathy":
        return {"annotations": annotations, "images": flickr8k_images}
    return {"annotations": annotations, "images": _Need((root / "flickr30k-images",), FLICKR30K_SOURCE, folder=True)}


class Layout(NamedTuple):
    """A known way a dataset's files lie in a folder: what it is, the files that give it away, how to read it."""

    name: str
    dataset: str  # the data.dataset that reads it
    markers: tuple[str, ...]  # paths under data_root, all present (a trailing "/" marks a folder)
    overlay: str  # the config overlay (or option) that reads it, as the user types it
    splits: tuple[str, ...] = ()  # for COCO: the splits the layout has, when the dataset is the same


LAYOUTS = (
    Layout(
        "COCO 2014",
        "coco",
        ("train2014/", "annotations/captions_train2014.json"),
        "-c configs/coco.yaml",
        ("train2014", "val2014"),
    ),
    Layout(
        "COCO 2014",
        "coco",
        ("val2014/", "annotations/captions_val2014.json"),
        "-c configs/coco.yaml",
        ("train2014", "val2014"),
    ),
    Layout(
        "COCO 2017",
        "coco",
        ("train2017/", "annotations/captions_train2017.json"),
        "-c configs/datasets/coco2017.yaml",
        ("train2017", "val2017"),
    ),
    Layout(
        "COCO 2017",
        "coco",
        ("val2017/", "annotations/captions_val2017.json"),
        "-c configs/datasets/coco2017.yaml",
        ("train2017", "val2017"),
    ),
    Layout("Karpathy's COCO splits", "coco_karpathy", ("dataset_coco.json",), "-c configs/datasets/coco_karpathy.yaml"),
    Layout("the official Flickr8k files", "flickr8k", ("Flickr8k.token.txt",), "-c configs/datasets/flickr8k.yaml"),
    Layout(
        "the official Flickr8k files",
        "flickr8k",
        ("Flickr8k_text/Flickr8k.token.txt",),
        "-c configs/datasets/flickr8k.yaml",
    ),
    Layout(
        "Kaggle's Flickr8k", "flickr8k_kaggle", ("captions.txt", "Images/"), "-c configs/datasets/flickr8k_kaggle.yaml"
    ),
    Layout("Kaggle's Flickr30k", "flickr30k_kaggle", ("results.csv",), "-c configs/datasets/flickr30k_kaggle.yaml"),
    Layout(
        "Kaggle's Flickr30k",
        "flickr30k_kaggle",
        ("flickr30k_images/results.csv",),
        "-c configs/datasets/flickr30k_kaggle.yaml",
    ),
    Layout(
        "Karpathy's Flickr8k split",
        "flickr8k_karpathy",
        ("dataset_flickr8k.json",),
        "-c configs/datasets/flickr8k.yaml --data.dataset flickr8k_karpathy",
    ),
    Layout(
        "Karpathy's Flickr30k split", "flickr30k", ("dataset_flickr30k.json",), "-c configs/datasets/flickr30k.yaml"
    ),
)


def detect_layouts(data_root: str | Path) -> list[Layout]:
    """The known layouts whose files lie under `data_root`, each once by (name, dataset)."""
    root = Path(data_root)
    found = [
        layout
        for layout in LAYOUTS
        if all((root / m).is_dir() if m.endswith("/") else (root / m).is_file() for m in layout.markers)
    ]
    if root.is_dir() and (next(root.glob("*.parquet"), None) or next(root.glob("*/*.parquet"), None)):
        found.append(
            Layout(
                "Hugging Face parquet shards",
                "",
                (),
                f"python -m clip_lab prepare --parquet {root} "
                "--dataset <flickr8k|flickr30k|coco> --out <folder>, then that folder as data_root",
            )
        )
    return list({(layout.name, layout.dataset): layout for layout in found}.values())


def _other_layout(dataset: str, data_root: str | Path, splits: Sequence[str]) -> str | None:
    """One line naming a layout found under `data_root` that is not the configured one, and what reads it."""
    others = [
        layout
        for layout in detect_layouts(data_root)
        if layout.dataset != dataset or (layout.splits and not set(splits) <= set(layout.splits))
    ]
    if not others:
        return None
    found = "; ".join(
        f"{layout.name} ({'convert once' if not layout.dataset else 'read'} with {layout.overlay})" for layout in others
    )
    return (
        f"data_root={data_root} holds {found}, not the files data.dataset={dataset} with splits "
        f"{', '.join(splits)} needs"
    )


def check_dataset_files(dataset: str, data_root: str | Path, splits: Sequence[str]) -> None:
    """Stop before any work on an unknown dataset or split, or with one error naming every missing file (or, when
    data_root holds another known layout, naming that and how to read it)."""
    for split in splits:
        check_split_name(_checked(dataset), split)
    try:
        if dataset == "coco":
            check_coco_files(data_root, list(splits))
            return
        missing = [need.describe() for need in _needs(dataset, Path(data_root)).values() if need.found() is None]
        if missing:
            raise ClipLabError(
                f"{dataset} files missing under data_root={data_root}: "
                + "; ".join(missing)
                + ". Put them there, or run `python -m clip_lab demo` for a generated dataset that "
                "needs no download"
            )
    except ClipLabError as e:
        other = _other_layout(dataset, data_root, splits)
        if other is None:
            raise
        raise ClipLabError(other) from e


def load_split(dataset: str, data_root: str | Path, split: str, split_seed: int = 0) -> CaptionedSplit:
    """One split of `dataset`, named `<dataset>_<split>` (official COCO keeps the bare split name, e.g. train2014);
    `split_seed` seeds the split of a download that names none (Kaggle's, without lists beside it)."""
    check_dataset_files(dataset, data_root, [split])
    if dataset == "coco":
        return load_coco_split(data_root, split)
    paths = {role: need.found() for role, need in _needs(dataset, Path(data_root)).items()}
    name = f"{dataset}_{split}"
    if dataset in KAGGLE:
        return kaggle.load_kaggle_split(
            KAGGLE[dataset], paths["annotations"], paths["images"], Path(data_root), split, name, split_seed
        )
    if dataset == "flickr8k":
        lists = {s: paths[s] for s in flickr8k.FLICKR8K_SPLITS}
        return flickr8k.load_flickr8k_split(paths["annotations"], lists, paths["images"], split, name)
    image_dir = Path(data_root) if dataset == "coco_karpathy" else paths["images"]  # COCO names hold their folder
    return karpathy.load_karpathy_split(paths["annotations"], image_dir, KARPATHY[dataset], split, name)
