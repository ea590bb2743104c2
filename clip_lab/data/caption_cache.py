"""The caption cache: each caption of a split embedded once by the frozen text encoder, metadata checked on load."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clip_lab.data.split import CaptionedSplit
from clip_lab.files import load_cache, name_slug, save_torch
from clip_lab.models.pretrained import FrozenText, canonical, fingerprint

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the layout or the meaning of the stored embeddings changes


def caption_cache_path(cache_dir: str | Path, split: CaptionedSplit, text_model: str, max_length: int) -> Path:
    """`captions_<split>_<fingerprint>_<model slug>_L<max_length>.pt`: the fingerprint keeps other data's same-named
    splits (the demo's val2014 and COCO's) in files of their own."""
    return split.cache_file(cache_dir, "captions", name_slug(canonical(text_model)), f"L{max_length}")


def expected_meta(split: CaptionedSplit, text_model: str, max_length: int) -> dict[str, Any]:
    """Everything the cached embeddings depend on; a cache whose metadata differs is stale and gets rebuilt."""
    encoder = {"text_model": canonical(text_model), "text_model_fingerprint": fingerprint(text_model)}
    return _meta(split, encoder | {"max_length": max_length})


def checkpoint_caption_cache(cache_dir: str | Path, split: CaptionedSplit, checkpoint_sha256: str) -> tuple[Path, dict]:
    """(path, metadata) of the caption cache of a checkpoint's own trained text encoder, named and checked by the
    checkpoint's content hash."""
    path = split.cache_file(cache_dir, "captions", f"ckpt{checkpoint_sha256[:16]}")
    return path, _meta(split, {"checkpoint_sha256": checkpoint_sha256})


def _meta(split: CaptionedSplit, encoder: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "split": split.name,
        "fingerprint": split.fingerprint,
        "annotation_sha256": split.annotation_sha256,
        **encoder,
        "n_captions": len(split.captions),
    }


def load_caption_cache(path: Path, meta: dict[str, Any], split: CaptionedSplit) -> dict[str, Any] | None:
    """The cache at `path` if it matches `meta` and the split's captions one by one; None (and why, logged) if not."""
    cache = load_cache(path, meta, "caption cache")
    if cache is None:
        return None
    if not torch.equal(cache["ann_ids"], torch.from_numpy(split.caption_ids)):
        log.warning("caption cache %s lists other annotations than %s; rebuilding it", path, split.annotation_file)
        return None
    return cache


def build_caption_cache(
    split: CaptionedSplit, encoder: FrozenText, path: Path, meta: dict[str, Any], batch_size: int = 1024
) -> None:
    """Embed every caption of `split` and write the cache atomically (float16 embeddings, ids, `meta`)."""
    t0 = time.perf_counter()
    emb = encoder.encode(split.captions, batch_size=batch_size, progress=True)
    save_torch(
        {
            "meta": meta | {"dim": encoder.dim},
            "embeddings": emb.half().cpu(),  # unit vectors: fp16 keeps ~1e-3 relative precision at half the size
            "ann_ids": torch.from_numpy(split.caption_ids),
            "image_ids": torch.from_numpy(split.image_ids[split.caption_image]),
        },
        path,
    )
    dt = time.perf_counter() - t0
    log.info(
        "caption cache %s: %d captions in %.1f s (%.0f captions/s)",
        path,
        len(split.captions),
        dt,
        len(split.captions) / max(dt, 1e-9),
    )


def ensure_caption_cache(
    split: CaptionedSplit,
    cache_dir: str | Path,
    text_model: str,
    max_length: int,
    encoder: Callable[[], FrozenText],
    batch_size: int = 1024,
) -> Path:
    """The path of the split's valid caption cache, built first (with `encoder()`, called only then) if needed."""
    path = caption_cache_path(cache_dir, split, text_model, max_length)
    meta = expected_meta(split, text_model, max_length)
    if load_caption_cache(path, meta, split) is None:
        log.info("building the caption cache of %s with %s -> %s", split.name, text_model, path)
        build_caption_cache(split, encoder(), path, meta, batch_size)
    return path


def caption_embeddings(path: Path, meta: dict[str, Any], split: CaptionedSplit) -> Tensor:
    """The float16 `[n_captions, dim]` embeddings of a valid cache (memory-mapped), in the split's caption order."""
    cache = load_caption_cache(path, meta, split)
    if cache is None:
        raise RuntimeError(f"caption cache {path} is missing or stale: prepare_data should have built it")
    return cache["embeddings"]
