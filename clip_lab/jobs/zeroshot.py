"""`python -m clip_lab zeroshot`: classify images by class names alone (prompt templates), trained or pretrained."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from clip_lab.data import datasets, image_cache
from clip_lab.errors import ClipLabError
from clip_lab.eval.zeroshot import TEMPLATES, TIE_TOL, check_classes, load_templates, warn_unknown_words
from clip_lab.files import save_json
from clip_lab.jobs.infer import (
    add_checkpoint_args,
    is_split,
    list_images,
    load_checkpoint,
    model_view,
    read_image,
    save_image_grid,
    slug,
    unused_path,
)
from clip_lab.jobs.retriever import Retriever
from clip_lab.options import JobParser

LABEL_KEY = "demo_shapes"  # image entries of the demo's captions json list the shapes drawn: the ground truth
PRINT_ROWS = 20  # per-image lines printed; the JSON holds them all

log = logging.getLogger(__name__)


def split_labels(annotation_file: Path, image_ids: Sequence[int]) -> list[list[str]] | None:
    """Per image, its `demo_shapes` from the captions json; None when the json carries none (real COCO)."""
    entries = {im["id"]: im for im in json.loads(Path(annotation_file).read_text())["images"]}
    labels = [entries[int(i)].get(LABEL_KEY) for i in image_ids]
    return None if any(lab is None for lab in labels) else labels


def folder_labels(root: Path, files: Sequence[Path], classes: Sequence[str]) -> list[list[str]] | None:
    """ImageFolder layout (`root/<class>/image.jpg`, every image in a class folder): the folder names; else None."""
    parts = [f.relative_to(root).parts for f in files] if root.is_dir() else []
    if parts and all(len(p) == 2 and p[0] in classes for p in parts):
        return [[p[0]] for p in parts]
    return None


@dataclass
class Images:
    """What `--images` names, embedded: one row per image."""

    source: dict[str, Any]  # what was read: a split (and its gallery cache), a folder or a file
    embeddings: Tensor
    names: list[str]
    labels: list[list[str]] | None  # per image, the classes that count as correct; None without ground truth
    pixels: Callable[[int], np.ndarray]  # the i-th image as stored (for the figure)
    refs: list[dict[str, Any]]  # per image, where a picture of it is found again (the report's figures)


def load_images(retriever: Retriever, images: str, classes: list[str]) -> Images:
    """An existing file or folder, else the retriever's split (its gallery: embedded once, then cached)."""
    ckpt = retriever.ckpt
    size = ckpt.data["cache_image_size"]
    if not Path(images).exists() and is_split(ckpt, images):
        split, gallery = retriever.split, retriever.images  # skipped (unreadable) images are left out
        usable = gallery.rows
        names = [split.file_names[i] for i in usable]
        coco_format = ckpt.data["dataset"] == "coco"  # only a COCO-format json can carry labels (the demo's shapes)
        labels = split_labels(split.annotation_file, split.image_ids[usable]) if coco_format else None
        source = {
            "kind": "split",
            "split": split.name,
            "gallery": str(gallery.file),
            "skipped_unreadable": len(split.file_names) - len(usable),
        }
        refs = [image_cache.image_ref(ckpt.data["cache_dir"], split, size, int(i)) for i in usable]
        pixels = lambda i: read_image(split.image_path(int(usable[i])), size)
        return Images(source, gallery.embeddings, names, labels, pixels, refs)
    if not Path(images).exists():
        known = ", ".join(datasets.split_names(ckpt.data["dataset"]))
        raise ClipLabError(
            f"--images {images}: no such file or folder, and not a split of the checkpoint's dataset "
            f"{ckpt.data['dataset']} ({known}); pass an image, a folder of images or a split name"
        )
    root = Path(images)
    files = list_images(root)
    names = [str(f.relative_to(root)) if root.is_dir() else f.name for f in files]
    source = {"kind": "folder" if root.is_dir() else "file", "path": str(root)}
    return Images(
        source,
        retriever.embed_images(files),
        names,
        folder_labels(root, files, classes),
        lambda i: read_image(files[i], size),
        [{"file": str(f)} for f in files],
    )


def main(argv: list[str] | None = None) -> dict:
    parser = JobParser(prog="python -m clip_lab zeroshot", description=__doc__)
    add_checkpoint_args(parser)
    parser.add_argument(
        "--images",
        required=True,
        help="an image file, a folder of images (class subfolders give accuracy), or a split (val2014)",
    )
    parser.add_argument("--classes", nargs="*", help="class names, e.g. person animal landscape")
    parser.add_argument("--templates", default=str(TEMPLATES), help="YAML file with a `templates:` list")
    parser.add_argument("--show", type=int, default=16, help="images in the figure")
    parser.add_argument(
        "--out",
        default=None,
        help="JSON output (the figure goes beside it as .png); default <run>/zeroshot/<images>_<classes>.json. An "
        "earlier result is never replaced: when the name is taken, <name>-2.json (-3, ...) is written instead",
    )
    args = parser.parse_args(argv)

    classes = check_classes(args.classes)
    templates = load_templates(args.templates)
    ckpt = load_checkpoint(args)
    split = args.images if not Path(args.images).exists() and is_split(ckpt, args.images) else None
    retriever = Retriever(ckpt, split)
    images = load_images(retriever, args.images, classes)
    names, labels = images.names, images.labels
    unknown = warn_unknown_words(retriever.encoder, classes, templates)

    predictions = []
    for i, (name, c) in enumerate(zip(names, retriever.classify_embeddings(images.embeddings, classes, templates))):
        # a tie predicts no class (`predicted` null, the tied classes in `tied`) and is never right: as in retrieval,
        # a tie counts against the model, not as whichever class happens to come first
        row = {
            "image": name,
            "predicted": c.predicted,
            "tied": c.tied,
            "probability": c.probabilities[c.predicted or c.tied[0]],
            "probs": c.probabilities,
            **images.refs[i],
        }
        if labels is not None:
            row["truth"], row["correct"] = labels[i], c.predicted is not None and c.predicted in labels[i]
        predictions.append(row)
    n_tied = sum(bool(r["tied"]) for r in predictions)
    if n_tied:
        common = Counter("/".join(r["tied"]) for r in predictions if r["tied"]).most_common(1)[0][0]
        log.warning(
            "%d of %d images have two or more classes tied for the top score (cosines within %g; most often "
            "%s): each counts as a wrong prediction",
            n_tied,
            len(predictions),
            TIE_TOL,
            common,
        )
    accuracy = chance = None
    if labels is not None:
        accuracy = sum(r["correct"] for r in predictions) / len(predictions)
        # a uniform guess is right with probability |truth among the classes| / |classes|, image by image
        chance = sum(len(set(lab) & set(classes)) for lab in labels) / len(classes) / len(labels)

    # named by the images and the classes: another class set on the same images is another result, not a replacement
    name = f"{slug(Path(args.images).stem, 40)}_{slug('-'.join(classes), 60)}"
    out = unused_path(Path(args.out) if args.out else ckpt.run_dir / "zeroshot" / f"{name}.json")
    figure = out.with_suffix(".png")
    result = {
        "checkpoint": ckpt.name,
        "images": args.images,
        "source": images.source,
        "classes": classes,
        "templates": templates,
        "templates_file": str(args.templates),
        "logit_scale": ckpt.logit_scale,
        "logit_bias": ckpt.logit_bias,  # SigLIP's: probabilities are per-class sigmoids, not a softmax
        "n_images": len(names),
        "accuracy": accuracy,
        "chance": chance,
        "tied_images": n_tied,
        "unknown_words": unknown,
        "predictions": predictions,
        "json": str(out),
        "figure": str(figure),
    }
    shown = range(min(max(args.show, 1), len(names)))
    colors = [("green" if predictions[i]["correct"] else "red") if labels else "black" for i in shown]
    save_image_grid(
        figure,
        [model_view(images.pixels(i), ckpt.data["image_size"]) for i in shown],
        [_title(predictions[i]) for i in shown],
        colors,
        suptitle=f"zero-shot: {', '.join(classes)}" + (f" (accuracy {accuracy:.2f})" if labels else ""),
    )
    save_json(result, out)
    _print(result)
    return result


def _label(row: dict) -> str:
    return f"tie {'/'.join(row['tied'])}" if row["tied"] else row["predicted"]


def _title(row: dict) -> str:
    truth = f"\ntruth: {'/'.join(dict.fromkeys(row['truth']))}" if "truth" in row else ""
    return f"{_label(row)} {row['probability']:.2f}{truth}"


def _print(result: dict) -> None:
    preds = result["predictions"]
    width = min(40, max(len(r["image"]) for r in preds))
    print(
        f"zero-shot over {result['n_images']} images, classes: {' '.join(result['classes'])} "
        f"({len(result['templates'])} templates, logit scale {result['logit_scale']:.1f}"
        + (
            f", bias {result['logit_bias']:.2f}: sigmoid probabilities)"
            if result.get("logit_bias") is not None
            else ")"
        )
    )
    for r in preds[:PRINT_ROWS]:
        top = sorted(r["probs"].items(), key=lambda kv: -kv[1])[:3]
        truth = f"  truth: {'/'.join(dict.fromkeys(r['truth']))}" if "truth" in r else ""
        print(
            f"{r['image'][-width:]:<{width}}  {_label(r):<12} {r['probability']:.3f}   "
            + "  ".join(f"{c} {p:.3f}" for c, p in top)
            + truth
        )
    if len(preds) > PRINT_ROWS:
        print(f"... {len(preds) - PRINT_ROWS} more in {result['json']}")
    if result["accuracy"] is not None:
        a, c = result["accuracy"], result["chance"]
        ties = f"   {result['tied_images']} tied images counted wrong" if result["tied_images"] else ""
        print(
            (
                f"accuracy {a:.3f}   chance {c:.3f}   ({a / c:.1f} x chance)"
                if c
                else f"accuracy {a:.3f}: none of the images' true classes is among these classes, "
                "so there is nothing to measure"
            )
            + ties
        )
    elif result["tied_images"]:
        print(f"{result['tied_images']} images with tied top classes")
    print(f"wrote {result['json']} and {result['figure']}")
