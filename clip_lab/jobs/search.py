"""`python -m clip_lab search`: the top-k images of a split for a text query, or its top-k captions for an image."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from clip_lab.errors import ClipLabError
from clip_lab.eval.index import KINDS, IndexSpec
from clip_lab.files import atomic_path, save_json
from clip_lab.jobs.infer import (
    add_checkpoint_args,
    load_checkpoint,
    model_view,
    read_image,
    require_file,
    save_image_grid,
    slug,
    unused_path,
)
from clip_lab.jobs.retriever import Retriever
from clip_lab.models.text import knows_no_word
from clip_lab.options import JobParser
from clip_lab.report.figures import FIGURE_RESULTS

log = logging.getLogger(__name__)


def gallery_k(k: int, n: int, what: str) -> int:
    """`k`, or the gallery's size `n` when `k` asks for more than it holds, with a warning that says so."""
    if k > n:
        log.warning("--k %d is more than the %d %s the gallery holds: returning all %d", k, n, what, n)
    return min(k, n)


def search_images(retriever: Retriever, text: str, k: int, figure: Path) -> dict:
    """The top-k images of the retriever's split for `text`, and a grid of them (rank, score) saved to `figure`."""
    encoder, split = retriever.encoder, retriever.split
    unknown = retriever.unknown_words([text])
    if unknown:  # they embed as the unknown token: results that look sure would not reflect them
        log.warning(
            "query %r: %s not in the text encoder's vocabulary (read as its unknown token); %s",
            text,
            ", ".join(map(repr, unknown)),
            "the ranking says nothing about the query"
            if knows_no_word(encoder, text)
            else "the ranking rests on the other words alone",
        )
    gallery = retriever.images
    matches = retriever.search_text(text, gallery_k(k, len(gallery), f"images of {split.name}"))
    # `caption` (the first) is what the report's search table and figure print
    results = [
        asdict(m) | {"caption": m.captions[0] if m.captions else None} | retriever.image_ref(m.image_id)
        for m in matches
    ]
    hp = retriever.ckpt.data
    shown = results[:FIGURE_RESULTS]
    save_image_grid(
        figure,
        [model_view(read_image(r["file"], hp["cache_image_size"]), hp["image_size"]) for r in shown],
        [f"#{r['rank']}  {r['score']:.3f}" for r in shown],
        suptitle=f'"{text}": top {len(results)} of {split.name}'
        + (f" (the first {len(shown)} shown)" if len(shown) < len(results) else ""),
        cols=5,
    )
    return {
        "query": {"text": text, "unknown_words": unknown},
        "k": len(results),
        "gallery": {"kind": "images", "n": len(gallery), "cache": str(gallery.file)},
        "index": gallery.index.describe(),
        "results": results,
    }


def search_captions(retriever: Retriever, image: Path, k: int, figure: Path) -> dict:
    """The top-k captions of the retriever's split for the image file `image`, and the image beside them saved to
    `figure`."""
    gallery, split, hp = retriever.captions, retriever.split, retriever.ckpt.data
    matches = retriever.search_image(image, gallery_k(k, len(gallery), f"captions of {split.name}"), "captions")
    results = [asdict(m) for m in matches]
    _caption_figure(
        figure,
        model_view(read_image(image, hp["cache_image_size"]), hp["image_size"]),
        image.name,
        results,
        split.name,
    )
    return {
        "query": {"image": str(image)},
        "k": len(results),
        "gallery": {"kind": "captions", "n": len(gallery), "cache": str(gallery.file)},
        "index": gallery.index.describe(),
        "results": results,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = JobParser(prog="python -m clip_lab search", description=__doc__)
    add_checkpoint_args(parser)
    parser.add_argument("--text", default=None, help="text query: returns the top-k images of the split")
    parser.add_argument("--image", default=None, help="image query (a file): returns the top-k captions of the split")
    parser.add_argument("--k", type=int, default=5, help="results to return (at most the gallery's size)")
    parser.add_argument("--split", default=None, help="gallery split (default: the checkpoint's test split, val2014)")
    parser.add_argument(
        "--out",
        default=None,
        help="JSON output (the figure goes beside it as .png); default <run>/search/<query>_<split>.json. An "
        "earlier result is never replaced: when the name is taken, <name>-2.json (-3, ...) is written instead",
    )
    parser.add_argument(
        "--index",
        choices=KINDS,
        default="exact",
        help="exact: every gallery row scored (on the GPU when there is one); hnsw: a FAISS HNSW "
        "graph, approximate, built once and saved beside the gallery cache",
    )
    parser.add_argument(
        "--ef_search",
        type=int,
        default=IndexSpec.ef_search,
        help="HNSW candidates per query: higher finds more of the exact top-k, slower",
    )
    parser.add_argument("--hnsw_m", type=int, default=IndexSpec.m, help="HNSW graph degree (FAISS's M)")
    parser.add_argument(
        "--ef_construction",
        type=int,
        default=IndexSpec.ef_construction,
        help="HNSW candidates per insertion while building",
    )
    args = parser.parse_args(argv)

    # every input is checked before the model loads, so a mistake costs nothing and reads as one line
    if (args.text is None) == (args.image is None):
        raise ClipLabError("give one query: --text 'words' (top-k images) or --image PATH (top-k captions)")
    if args.text is not None and not args.text.strip():
        raise ClipLabError("empty query: --text needs some words, e.g. --text 'a red circle'")
    if args.image is not None:
        require_file(args.image, "query image", "pass an existing JPEG or PNG file with --image")
    if args.k < 1:
        raise ClipLabError(f"--k must be at least 1, not {args.k}")
    spec = IndexSpec(args.index, args.ef_search, args.hnsw_m, args.ef_construction)
    spec.check()  # also: faiss importable when --index hnsw
    ckpt = load_checkpoint(args)
    if args.image is not None:  # unreadable query image: fail before any gallery work
        read_image(args.image, ckpt.data["cache_image_size"])
    retriever = Retriever(ckpt, args.split, spec)
    split = retriever.split  # a missing split: one line now, before the output is named

    text = args.text.strip() if args.text is not None else None
    name = f"text-{slug(text)}" if text else f"image-{slug(Path(args.image).stem)}"
    out = unused_path(Path(args.out) if args.out else ckpt.run_dir / "search" / f"{name}_{split.name}.json")
    figure = out.with_suffix(".png")
    if text:
        result = search_images(retriever, text, args.k, figure)
    else:
        result = search_captions(retriever, Path(args.image), args.k, figure)
    result |= {
        "checkpoint": ckpt.name,
        "split": split.name,
        "score": "cosine similarity",
        "json": str(out),
        "figure": str(figure),
    }
    save_json(result, out)
    _print(result)
    return result


def _caption_figure(path: Path, view: np.ndarray, name: str, results: list[dict], split: str) -> None:
    """The query image (as the model sees it) beside its ranked captions (the first FIGURE_RESULTS of them)."""
    from matplotlib.figure import Figure

    shown = results[:FIGURE_RESULTS]
    fig = Figure(figsize=(8.5, max(2.6, 0.8 + 0.17 * len(shown))), layout="constrained")  # ~0.17 in a 9 pt line
    left, right = fig.subplots(1, 2, width_ratios=[1, 2.6])
    left.imshow(view)
    left.set_title(name, fontsize=9)
    lines = [f"#{r['rank']}  {r['score']:.3f}  {r['caption'][:80]}  (image {r['image_id']})" for r in shown]
    right.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=9)
    more = f" (the first {len(shown)} shown)" if len(shown) < len(results) else ""
    right.set_title(f"top {len(results)} captions of {split}{more}", fontsize=10, loc="left")
    for ax in (left, right):
        ax.axis("off")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _print(result: dict) -> None:
    query = result["query"]
    what = "images" if "text" in query else "captions"
    index = result["index"]
    how = (
        f"HNSW index M {index['m']}, efConstruction {index['ef_construction']}, efSearch {index['ef_search']}"
        if index["kind"] == "hnsw"
        else f"exact index on {index['device']}"
    )
    print(
        f"top {len(result['results'])} {what} of {result['split']} for "
        + (f'"{query["text"]}"' if "text" in query else query["image"])
        + f" ({result['score']}, {how})"
    )
    for r in result["results"]:
        tail = f"{r['file_name']}  ({r['caption']})" if what == "images" else r["caption"]
        print(f"{r['rank']:>4}  {r['score']:.4f}  image {r['image_id']:<10} {tail}")
    print(f"wrote {result['json']} and {result['figure']}" + (f" (index {index['file']})" if index.get("file") else ""))
