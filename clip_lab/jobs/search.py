"""`python -m clip_lab search`: the top-k images of a split for a text query, or its top-k captions for an image."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from clip_lab.data import image_cache
from clip_lab.data.split import CaptionedSplit
from clip_lab.errors import ClipLabError
from clip_lab.eval.index import KINDS, IndexSpec, open_index
from clip_lab.files import atomic_path, save_json
from clip_lab.jobs.infer import (
    Checkpoint,
    add_checkpoint_args,
    caption_gallery,
    embed_files,
    image_gallery,
    load_checkpoint,
    model_view,
    open_split,
    read_image,
    require_file,
    save_image_grid,
    slug,
    text_encoder,
    unused_path,
)
from clip_lab.models.text import knows_no_word
from clip_lab.options import JobParser
from clip_lab.report.figures import FIGURE_RESULTS

log = logging.getLogger(__name__)


def gallery_k(k: int, n: int, what: str) -> int:
    """`k`, or the gallery's size `n` when `k` asks for more than it holds, with a warning that says so."""
    if k > n:
        log.warning("--k %d is more than the %d %s the gallery holds: returning all %d", k, n, what, n)
    return min(k, n)


def search_images(
    ckpt: Checkpoint, split: CaptionedSplit, text: str, k: int, figure: Path, spec: IndexSpec = IndexSpec()
) -> dict:
    """The top-k images of `split` for `text` through the index `spec`, and a grid of them (rank, score) saved to
    `figure`."""
    encoder = text_encoder(ckpt)
    unknown = encoder.unknown_words([text])
    if unknown:  # they embed as the unknown token: results that look sure would not reflect them
        log.warning(
            "query %r: %s not in the text encoder's vocabulary (read as its unknown token); %s",
            text,
            ", ".join(map(repr, unknown)),
            "the ranking says nothing about the query"
            if knows_no_word(encoder, text)
            else "the ranking rests on the other words alone",
        )
    gallery, usable, cache = image_gallery(ckpt, split)
    k = gallery_k(k, len(gallery), f"images of {split.name}")
    query = encoder.encode([text])[0].cpu()
    searcher = open_index(spec, gallery, cache, ckpt.device)
    scores, rows = searcher.top_k(query, k)
    index = usable[rows].tolist()
    start = split.caption_start
    hp = ckpt.data
    results = [
        {
            "rank": r + 1,
            "score": s,
            "image_id": int(split.image_ids[i]),
            "file_name": split.file_names[i],
            "caption": split.captions[start[i]] if start[i + 1] > start[i] else None,
            **image_cache.image_ref(hp["cache_dir"], split, hp["cache_image_size"], i),
        }
        for r, (s, i) in enumerate(zip(scores, index))
    ]
    size = ckpt.data["cache_image_size"]
    shown = index[:FIGURE_RESULTS]
    save_image_grid(
        figure,
        [model_view(read_image(split.image_path(i), size), ckpt.data["image_size"]) for i in shown],
        [f"#{r['rank']}  {r['score']:.3f}" for r in results[: len(shown)]],
        suptitle=f'"{text}": top {len(index)} of {split.name}'
        + (f" (the first {len(shown)} shown)" if len(shown) < len(index) else ""),
        cols=5,
    )
    return {
        "query": {"text": text, "unknown_words": unknown},
        "k": k,
        "gallery": {"kind": "images", "n": len(gallery), "cache": str(cache)},
        "index": searcher.describe(),
        "results": results,
    }


def search_captions(
    ckpt: Checkpoint, split: CaptionedSplit, image: Path, k: int, figure: Path, spec: IndexSpec = IndexSpec()
) -> dict:
    """The top-k captions of `split` for the image file `image` through the index `spec`, and the image beside them
    saved to `figure`."""
    gallery, cache = caption_gallery(ckpt, split)
    k = gallery_k(k, len(gallery), f"captions of {split.name}")
    query = embed_files(ckpt, [image])[0]
    searcher = open_index(spec, gallery, cache, ckpt.device)
    scores, rows = searcher.top_k(query, k)
    results = [
        {
            "rank": r + 1,
            "score": s,
            "caption": split.captions[j],
            "caption_id": int(split.caption_ids[j]),
            "image_id": int(split.image_ids[split.caption_image[j]]),
            "file_name": split.file_names[split.caption_image[j]],
        }
        for r, (s, j) in enumerate(zip(scores, rows))
    ]
    _caption_figure(
        figure,
        model_view(read_image(image, ckpt.data["cache_image_size"]), ckpt.data["image_size"]),
        image.name,
        results,
        split.name,
    )
    return {
        "query": {"image": str(image)},
        "k": k,
        "gallery": {"kind": "captions", "n": len(gallery), "cache": str(cache)},
        "index": searcher.describe(),
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
    split = open_split(ckpt, args.split or ckpt.data["test_split"])

    text = args.text.strip() if args.text is not None else None
    name = f"text-{slug(text)}" if text else f"image-{slug(Path(args.image).stem)}"
    out = unused_path(Path(args.out) if args.out else ckpt.run_dir / "search" / f"{name}_{split.name}.json")
    figure = out.with_suffix(".png")
    if text:
        result = search_images(ckpt, split, text, args.k, figure, spec)
    else:
        result = search_captions(ckpt, split, Path(args.image), args.k, figure, spec)
    result |= {
        "checkpoint": str(ckpt.path),
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
