"""`python -m clip_lab embed`: a checkpoint's embeddings of a split, a folder of images or a file of texts, in a .pt.

A split gives every readable image and every caption; the one `.pt` file is for use elsewhere (numpy, FAISS, another
notebook)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from clip_lab.errors import ClipLabError
from clip_lab.files import save_torch
from clip_lab.jobs.infer import add_checkpoint_args, list_images, load_checkpoint, require_file, slug
from clip_lab.jobs.retriever import Retriever
from clip_lab.options import JobParser

log = logging.getLogger(__name__)


def read_texts(path: str | Path) -> list[str]:
    """One text per line of a UTF-8 file; blank lines are skipped; at least one text."""
    path = require_file(path, "text file", "pass a UTF-8 file with one text per line")
    try:
        texts = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise ClipLabError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from e
    if not texts:
        raise ClipLabError(f"{path} holds no text (one text per line)")
    return texts


def main(argv: list[str] | None = None) -> dict:
    parser = JobParser(prog="python -m clip_lab embed", description=__doc__)
    add_checkpoint_args(parser)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--split", help="a split of the checkpoint's dataset: every readable image and every caption")
    what.add_argument("--images", help="an image file or a folder of images (searched recursively)")
    what.add_argument("--texts", help="a UTF-8 file with one text per line")
    parser.add_argument("--out", default=None, help="output .pt (default <run>/embeddings/<what>.pt)")
    args = parser.parse_args(argv)

    if args.images is not None:
        files = list_images(args.images)  # checked before the model loads
    texts = read_texts(args.texts) if args.texts is not None else None
    ckpt = load_checkpoint(args)
    retriever = Retriever(ckpt, args.split)
    meta = {
        "checkpoint": ckpt.name,
        "checkpoint_sha256": ckpt.sha256,
        "note": "rows are L2-normalized: cosine similarity is the dot product",
    }
    if args.split is not None:
        split = retriever.split
        images, usable = retriever.images.embeddings, retriever.images.rows  # unreadable images are left out
        captions = retriever.captions.embeddings
        position = torch.full((len(split.image_ids),), -1, dtype=torch.long)
        position[torch.from_numpy(usable)] = torch.arange(len(usable))
        out = {
            "split": split.name,
            "image_embeddings": images.float(),
            "image_ids": torch.from_numpy(split.image_ids[usable]),
            "file_names": [split.file_names[i] for i in usable],
            "caption_embeddings": captions.float(),
            "captions": split.captions,
            "caption_ids": torch.from_numpy(split.caption_ids),
            # the row of image_embeddings each caption belongs to; -1: its image could not be read
            "caption_image_row": position[torch.from_numpy(split.caption_image)],
        }
        name = split.name
    elif args.images is not None:
        root = Path(args.images)
        out = {
            "image_embeddings": retriever.embed_images(files),
            "file_names": [str(f.relative_to(root)) if root.is_dir() else f.name for f in files],
        }
        name = f"images-{slug(root.stem)}"
    else:
        unknown = retriever.unknown_words(texts)
        if unknown:  # they embed as the unknown token: the rows would not reflect them
            log.warning(
                "%s: %s not in the text encoder's vocabulary (read as its unknown token)",
                args.texts,
                ", ".join(map(repr, unknown)),
            )
        out = {"texts": texts, "text_embeddings": retriever.embed_texts(texts), "unknown_words": unknown}
        name = f"texts-{slug(Path(args.texts).stem)}"
    path = Path(args.out) if args.out else ckpt.run_dir / "embeddings" / f"{name}.pt"
    save_torch(out | meta, path)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in out.items() if isinstance(v, torch.Tensor) and v.ndim == 2)
    print(f"wrote {path}: {shapes} (load with torch.load(path, weights_only=True))")
    return out | meta | {"path": str(path)}
