"""`python -m clip_lab zeroshot`: classify images by class names alone (prompt templates) with a trained checkpoint."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F
import yaml
from torch import Tensor

from clip_lab.data import datasets, image_cache
from clip_lab.errors import ClipLabError
from clip_lab.files import CONFIGS, save_json
from clip_lab.jobs.infer import (
    Checkpoint,
    add_checkpoint_args,
    embed_files,
    image_gallery,
    is_split,
    list_images,
    load_checkpoint,
    model_view,
    open_split,
    read_image,
    save_image_grid,
    slug,
    text_encoder,
    unused_path,
)
from clip_lab.models.text import TextEncoder, knows_no_word
from clip_lab.models.text_towers import TextTower
from clip_lab.options import JobParser

TEMPLATES = CONFIGS / "prompts.yaml"
LABEL_KEY = "demo_shapes"  # image entries of the demo's captions json list the shapes drawn: the ground truth
PRINT_ROWS = 20  # per-image lines printed; the JSON holds them all
# Classes whose cosines with an image are within TIE_TOL of each other tie. Identical class embeddings give bitwise
# equal float32 cosines in practice; summed in another order, the 512-1024 products of two unit vectors differ by
# ~1e-7 (float32 rounding, measured 4e-8 at 512; bf16 or fp16 embeddings change nothing, as equal embeddings round
# equally and the scores are float32). 1e-5 is 100x that, yet far below what bf16 embeddings resolve (~4e-3 of a
# cosine), so no difference the model could mean is called a tie. Near-duplicate embeddings (equal prompts encoded
# in batches of other shapes on a GPU) are not caught; the unknown-word warnings name the usual cause of equal ones.
TIE_TOL = 1e-5

log = logging.getLogger(__name__)


def load_templates(path: str | Path) -> list[str]:
    """The `templates:` list of a YAML file, each a string with one `{}` where the class name goes."""
    path = Path(path)
    try:
        templates = yaml.safe_load(path.read_text()).get("templates")
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise ClipLabError(
            f"cannot read prompt templates from {path} ({type(e).__name__}); pass a YAML file with a "
            f"`templates:` list, like {TEMPLATES}"
        ) from e
    if not templates or not all(isinstance(t, str) and t.count("{}") == 1 for t in templates):
        raise ClipLabError(
            f"{path}: `templates:` must be a non-empty list of strings with one {{}} each, e.g. 'a photo of a {{}}.'"
        )
    return templates


def check_classes(classes: Sequence[str] | None) -> list[str]:
    names = [c.strip() for c in classes or []]
    if len(names) < 2 or not all(names):
        raise ClipLabError(
            f"zero-shot needs at least two non-empty class names, got {names}; pass them with "
            "--classes, e.g. --classes person animal landscape"
        )
    if len(set(names)) < len(names):
        raise ClipLabError(f"class names repeat in --classes {' '.join(names)}: give each once")
    return names


def class_embeddings(encoder: TextEncoder | TextTower, classes: Sequence[str], templates: Sequence[str]) -> Tensor:
    """`[n_classes, dim]`: each class the normalized mean of its prompts' normalized embeddings (CLIP's ensembling)."""
    prompts = [t.replace("{}", c) for c in classes for t in templates]
    emb = encoder.encode(prompts).float().cpu().view(len(classes), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


def class_scores(image_emb: Tensor, class_emb: Tensor) -> Tensor:
    """`[n_images, n_classes]` float32 cosines (both sides are L2-normalized); float32 keeps ties exact (TIE_TOL)."""
    return image_emb.float() @ class_emb.float().T


def class_probabilities(scores: Tensor, logit_scale: float) -> Tensor:
    """Softmax over classes of `logit_scale * cosine`: the temperature the model learned in training."""
    return (logit_scale * scores).softmax(dim=-1)


def top_classes(scores: Tensor, tol: float = TIE_TOL) -> list[list[int]]:
    """Per row of `scores`, the columns within `tol` of its best: one class, or every class tied for the top."""
    best = scores.max(dim=1, keepdim=True).values
    return [row.nonzero().flatten().tolist() for row in scores >= best - tol]


def warn_unknown_words(encoder: TextEncoder | TextTower, classes: Sequence[str], templates: Sequence[str]) -> dict:
    """Warn about class-name and template words the text encoder reads as its unknown token; return them by class.

    A class none of whose words is known embeds as its templates around unknown tokens, whatever its name says: it
    ties with every other such class of as many words, and its score says nothing about the class.
    """
    by_class = {c: words for c in classes if (words := encoder.unknown_words([c]))}
    blind = [c for c in by_class if knows_no_word(encoder, c)]
    in_templates = encoder.unknown_words([t.replace("{}", " ") for t in templates])
    if blind:
        log.warning(
            "zero-shot classes %s: none of their words is in the text encoder's vocabulary, so their prompts "
            "are the templates alone around unknown tokens and their scores say nothing about them",
            ", ".join(map(repr, blind)),
        )
    partly = {c: w for c, w in by_class.items() if c not in blind}
    if partly:
        log.warning(
            "zero-shot class words outside the text encoder's vocabulary (read as its unknown token): %s",
            "; ".join(f"{c!r}: {', '.join(w)}" for c, w in partly.items()),
        )
    if in_templates:
        log.warning(
            "prompt template words outside the text encoder's vocabulary (read as its unknown token): %s",
            ", ".join(in_templates),
        )
    return {"classes": by_class, "templates": in_templates}


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


def load_images(ckpt: Checkpoint, images: str, classes: list[str]) -> Images:
    """An existing file or folder, else a split of the checkpoint's dataset (embedded once, then cached)."""
    size = ckpt.data["cache_image_size"]
    if not Path(images).exists() and is_split(ckpt, images):
        split = open_split(ckpt, images)
        emb, usable, gallery = image_gallery(ckpt, split)  # skipped (unreadable) images are left out
        names = [split.file_names[i] for i in usable]
        coco_format = ckpt.data["dataset"] == "coco"  # only a COCO-format json can carry labels (the demo's shapes)
        labels = split_labels(split.annotation_file, split.image_ids[usable]) if coco_format else None
        source = {
            "kind": "split",
            "split": split.name,
            "gallery": str(gallery),
            "skipped_unreadable": len(split.file_names) - len(usable),
        }
        refs = [image_cache.image_ref(ckpt.data["cache_dir"], split, size, int(i)) for i in usable]
        return Images(source, emb, names, labels, lambda i: read_image(split.image_path(int(usable[i])), size), refs)
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
        embed_files(ckpt, files),
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
    images = load_images(ckpt, args.images, classes)
    names, labels = images.names, images.labels
    encoder = text_encoder(ckpt)
    unknown = warn_unknown_words(encoder, classes, templates)
    class_emb = class_embeddings(encoder, classes, templates)
    scores = class_scores(images.embeddings, class_emb)
    probs = class_probabilities(scores, ckpt.logit_scale)
    tops = top_classes(scores)

    predictions = []
    for i, name in enumerate(names):
        # a tie predicts no class (`predicted` null, the tied classes in `tied`) and is never right: as in retrieval,
        # a tie counts against the model, not as whichever class happens to come first
        tied = [classes[j] for j in tops[i]] if len(tops[i]) > 1 else []
        predicted = None if tied else classes[tops[i][0]]
        row = {
            "image": name,
            "predicted": predicted,
            "tied": tied,
            "probability": round(float(probs[i, tops[i][0]]), 5),
            "probs": {c: round(float(p), 5) for c, p in zip(classes, probs[i].tolist())},
            **images.refs[i],
        }
        if labels is not None:
            row["truth"], row["correct"] = labels[i], predicted is not None and predicted in labels[i]
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
        "checkpoint": str(ckpt.path),
        "images": args.images,
        "source": images.source,
        "classes": classes,
        "templates": templates,
        "templates_file": str(args.templates),
        "logit_scale": ckpt.logit_scale,
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
        f"({len(result['templates'])} templates, logit scale {result['logit_scale']:.1f})"
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
