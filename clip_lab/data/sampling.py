"""Batches of (image, caption) index pairs: each image at most once per batch, reproducible per (seed, epoch)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np

Pairs = Literal["image", "caption", "first"]


class PairBatchSampler:
    """Yields lists of `(image_index, caption_index)` for a DataLoader's `batch_sampler`.

    - `pairs="image"`: an epoch visits every image (with >= 1 caption) once, each with one of its captions drawn at
      random: the standard CLIP fine-tuning epoch.
    - `pairs="caption"`: an epoch visits every caption once. It runs in rounds; round r pairs each image that has
      more than r captions with one not used yet, and batches never span two rounds, so an image never meets itself
      (a same-image caption as a negative would be a false negative).
    - `pairs="first"`: every image of `images` once, in order, with its first caption (-1 if it has none): evaluation.

    `caption_start` are CSR offsets (`[n_images + 1]`, captions of image i are `start[i]:start[i+1]`); `images` limits
    the sampler to a subset. Over `world_size` processes every rank draws the same epoch and takes its `batch_size`
    slice of each global batch, so no image appears twice in a global batch and each appears once per epoch.
    Lightning calls `set_epoch`, which reseeds the shuffle, so a resumed run sees the same batches as an uninterrupted
    one.
    """

    def __init__(
        self,
        caption_start: np.ndarray,
        batch_size: int,
        pairs: Pairs = "image",
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        images: np.ndarray | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if pairs not in ("image", "caption", "first"):
            raise ValueError(f"pairs must be 'image', 'caption' or 'first', not {pairs!r}")
        self.rank, self.world_size = rank, world_size
        self.start = np.asarray(caption_start, dtype=np.int64)
        self.count = np.diff(self.start)
        self.images = np.arange(len(self.count)) if images is None else np.asarray(images, dtype=np.int64)
        if pairs != "first":
            self.images = self.images[self.count[self.images] > 0]
        else:  # evaluation: each rank embeds every world_size-th image; the module gathers them
            self.images = self.images[rank::world_size]
        self.batch_size, self.pairs, self.shuffle, self.drop_last, self.seed = (
            batch_size,
            pairs,
            shuffle,
            drop_last,
            seed,
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rounds(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The epoch's pairs as (images, captions) arrays, one per round; batches never cross a round."""
        rng = np.random.default_rng([self.seed, self.epoch])
        imgs, count = self.images, self.count[self.images]
        if self.pairs == "first":
            return [(imgs, np.where(count > 0, self.start[imgs], -1))]
        if self.pairs == "image":
            caps = self.start[imgs] + (rng.random(len(imgs)) * count).astype(np.int64)
            rounds = [(imgs, caps)]
        else:
            offset = (rng.random(len(imgs)) * count).astype(np.int64)  # a random caption order, rotated per image
            rounds = []
            for r in range(int(count.max(initial=0))):
                keep = count > r
                rounds.append((imgs[keep], self.start[imgs[keep]] + (offset[keep] + r) % count[keep]))
        if self.shuffle:
            rounds = [(i[p], c[p]) for i, c in rounds for p in [rng.permutation(len(i))]]
        return rounds

    @property
    def global_batch(self) -> int:
        """Pairs per step over all ranks (training); each rank takes its `batch_size` slice of each global batch."""
        return self.batch_size * (self.world_size if self.pairs != "first" else 1)

    def _n_batches(self, n: int) -> int:
        return n // self.global_batch if self.drop_last else -(-n // self.global_batch)

    def __len__(self) -> int:
        count = self.count[self.images]
        if self.pairs == "caption":
            return sum(self._n_batches(int((count > r).sum())) for r in range(int(count.max(initial=0))))
        return self._n_batches(len(self.images))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for imgs, caps in self._rounds():  # every rank draws the same global order (same seed), then its slice
            for b in range(self._n_batches(len(imgs))):
                sl = slice(b * self.global_batch, (b + 1) * self.global_batch)
                if self.global_batch != self.batch_size:
                    shard = np.array_split(np.arange(len(imgs[sl])), self.world_size)[self.rank]
                    yield list(zip(imgs[sl][shard].tolist(), caps[sl][shard].tolist()))
                else:
                    yield list(zip(imgs[sl].tolist(), caps[sl].tolist()))
