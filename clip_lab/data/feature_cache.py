"""The feature cache: a pretrained image tower's features of a split's images, computed once from its image cache."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clip_lab.data import image_cache
from clip_lab.data.split import CaptionedSplit
from clip_lab.files import load_cache, name_slug, save_torch
from clip_lab.models.pretrained import canonical, fingerprint, image_tower
from clip_lab.models.vision import ImageTower

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the layout or the meaning of the stored features changes (2: resized as PIL resizes)


def feature_cache_path(cache_dir: str | Path, split: CaptionedSplit, model_name: str, size: int) -> Path:
    """`features_<split>_<fingerprint>_<model slug>_<size>.pt`, `size` being the image cache's square side the features
    come from, the fingerprint that of the split's data (as in the image cache's name)."""
    return split.cache_file(cache_dir, "features", name_slug(canonical(model_name)), size)


def expected_meta(split: CaptionedSplit, model_name: str, size: int) -> dict[str, Any]:
    """Everything the cached features depend on; a cache whose metadata differs is stale and gets rebuilt."""
    return {
        "version": CACHE_VERSION,
        "split": split.name,
        "image_cache": image_cache.expected_meta(split, size),  # the pixels the features were computed from
        "model": canonical(model_name),
        "model_fingerprint": fingerprint(model_name),
    }


def load_feature_cache(path: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The cache at `path` if it matches `meta` and holds a row per image; None (and why, logged) if not."""
    cache = load_cache(path, meta, "feature cache")
    if cache is None:
        return None
    stored = cache["meta"]
    n = meta["image_cache"]["n_images"]
    for key, dim in (("pooled", stored.get("feature_dim")), ("embeds", stored.get("embed_dim"))):
        t = cache.get(key)
        if not isinstance(t, torch.Tensor) or t.shape != (n, dim) or t.dtype != torch.float16:
            log.warning(
                "feature cache %s has a malformed %r (expected float16 [%d, %s]); rebuilding it", path, key, n, dim
            )
            return None
    return cache


def build_feature_cache(
    images: np.ndarray,
    tower: ImageTower,
    path: Path,
    meta: dict[str, Any],
    batch_size: int = 256,
) -> dict[str, Any]:
    """Run `tower` over the NHWC uint8 `images` in batches and write the cache atomically; return what was written.

    A thread reads the next batch from the memmap while the device works on this one; the outputs stay on the
    device until the end, so the loop never waits for a device-to-host copy.
    """
    device = next(tower.parameters()).device
    n = len(images)
    side = images.shape[1] if images.ndim == 4 else 0
    wanted = tower.preprocessing.resize or tower.input_size  # the side its processor resizes to (then crops)
    if 0 < side < wanted:
        log.warning(
            "the image cache's squares (%d px) are smaller than the %d px %s resizes to, and are upsampled: set "
            "data.cache_image_size to at least %d to give it its own resolution",
            side,
            wanted,
            tower.name,
            wanted,
        )
    pooled = torch.empty(n, tower.feature_dim, dtype=torch.float16, device=device)
    embeds = torch.empty(n, tower.embed_dim, dtype=torch.float16, device=device)

    def read(start: int) -> torch.Tensor:
        batch = torch.from_numpy(np.array(images[start : start + batch_size]))  # a copy: the disk read happens here
        return batch.pin_memory() if device.type == "cuda" else batch

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    starts = range(0, n, batch_size)
    with (
        ThreadPoolExecutor(1) as reader,
        tqdm(total=n, desc=f"features {meta['split']}", unit="img", disable=None) as bar,
    ):
        ahead = reader.submit(read, 0) if n else None
        for start in starts:
            batch = ahead.result()
            if start + batch_size < n:
                ahead = reader.submit(read, start + batch_size)
            # NHWC -> NCHW as a view: the tower's resize reads it as it is (channels_last on the device)
            p, e = tower(batch.to(device, non_blocking=True).permute(0, 3, 1, 2))
            pooled[start : start + len(batch)] = p
            embeds[start : start + len(batch)] = e
            bar.update(len(batch))
    cache = {
        "meta": meta
        | {
            "input_size": tower.input_size,
            "feature_dim": tower.feature_dim,
            "embed_dim": tower.embed_dim,
            "preprocessing": asdict(tower.preprocessing) | {"from": f"{images.shape[1]} px central squares"},
        },
        "pooled": pooled.cpu(),  # fp16: these feed a trained head, ~1e-3 relative precision is plenty
        "embeds": embeds.cpu(),
    }
    save_torch(cache, path)
    dt = time.perf_counter() - t0
    log.info("feature cache %s: %d images in %.1f s (%.0f images/s)", path, n, dt, n / max(dt, 1e-9))
    return cache


def ensure_feature_cache(
    split: CaptionedSplit,
    cache_dir: str | Path,
    cache_image_size: int,
    model_name: str,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    workers: int = 0,
    max_bad: float = 0.01,
) -> dict[str, Any]:
    """`{"meta", "pooled": fp16 [n_images, feature_dim], "embeds": fp16 [n_images, embed_dim]}` of the split, on CPU.

    Rows follow the split's image order. The features come from the split's image cache at `cache_image_size`
    (built first if needed, with `workers` and `max_bad` as there), never from the JPEGs; `pooled` is what the
    model's image projection consumes (`ImageTower`), `embeds` the model's own normalized image embedding. Rows of the
    images the image cache skipped (`image_cache.bad_image_indices`) hold the features of a black square: callers
    skip them. A valid cache file is loaded as is; a missing, stale or unreadable one is rebuilt on `device`.
    """
    # first, even when the features are cached: callers read the skipped images from the image cache's metadata
    images = image_cache.ensure_image_cache(cache_dir, split, cache_image_size, device, workers, max_bad)
    path = feature_cache_path(cache_dir, split, model_name, cache_image_size)
    meta = expected_meta(split, model_name, cache_image_size)
    cache = load_feature_cache(path, meta)
    if cache is None:
        log.info("building the feature cache of %s with %s -> %s", split.name, model_name, path)
        tower = image_tower(model_name).to(device)
        cache = build_feature_cache(images, tower, path, meta, batch_size)
    return cache
