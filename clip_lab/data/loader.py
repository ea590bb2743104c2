"""Batches straight from the memory-mapped image cache to the device: gather threads, pinned buffers, a copy stream.

A DataLoader with worker processes would copy every batch three times on the host (worker -> shared memory ->
pinned memory) and fork a process per worker; here each batch is gathered once, by a thread (numpy's `take` runs
without the GIL), into a reusable pinned buffer, and copied to the GPU on a side stream while the previous step
computes. Host memory stays bounded: `prefetch` pinned slots, whatever the dataset size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

Batch = tuple[Tensor, Tensor, Tensor]


class CachedBatchLoader:
    """Iterates `(images uint8 [B, S, S, 3], text [B, D], image index [B])` for each batch of pairs.

    `embeddings` holds one row per caption: float16 cached text embeddings, or int32 token rows for a trained text
    encoder. `batch_sampler` yields lists of `(image_index, caption_index)`; a caption index of -1 gives a zero row.
    Rows are gathered in file order (pairs stay pairs). On CUDA the tensors arrive on `device`, copied on a side
    stream and ready to use; on the CPU they are plain tensors. Lightning calls `batch_sampler.set_epoch`.
    """

    def __init__(
        self,
        images: str | Path,
        embeddings: Tensor,
        batch_sampler: Iterable[list[tuple[int, int]]],
        device: str | torch.device = "cpu",
        threads: int = 4,
        prefetch: int = 4,
    ) -> None:
        self.path, self.embeddings, self.batch_sampler = Path(images), embeddings, batch_sampler
        self.device = torch.device(device)
        self.threads, self.prefetch = max(1, threads), max(1, prefetch)
        self._images: np.ndarray | None = None
        self._slots: list[tuple[Tensor, Tensor, Tensor]] = []

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.path, mmap_mode="r")
        return self._images

    def _slot(self, k: int, size: int) -> tuple[Tensor, Tensor, Tensor]:
        """The k-th reusable host buffer set, pinned on CUDA (allocated once: pinning is slow)."""
        while len(self._slots) <= k or len(self._slots[k][0]) < size:
            pin = self.device.type == "cuda"
            shape = (size, *self.images.shape[1:])
            with torch.inference_mode(False):  # evaluation runs in inference mode; the slots outlive it
                slot = (
                    torch.empty(shape, dtype=torch.uint8, pin_memory=pin),
                    torch.empty(size, self.embeddings.shape[1], dtype=self.embeddings.dtype, pin_memory=pin),
                    torch.empty(size, dtype=torch.int64, pin_memory=pin),
                )
            if len(self._slots) <= k:
                self._slots.append(slot)
            else:
                self._slots[k] = slot
        return self._slots[k]

    def _load(
        self, pairs: list[tuple[int, int]], slot: tuple[Tensor, Tensor, Tensor], stream: torch.cuda.Stream | None
    ) -> Batch:
        p = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        p = p[np.argsort(p[:, 0], kind="stable")]  # read the file front to back
        n = len(p)
        images, text, index = (t[:n] for t in slot)
        np.take(self.images, p[:, 0], axis=0, out=images.numpy())
        captions = torch.from_numpy(p[:, 1])
        torch.index_select(self.embeddings, 0, captions.clamp(min=0), out=text)
        text[captions < 0] = 0
        index.copy_(torch.from_numpy(p[:, 0]))
        if stream is None:
            return images.clone(), text.clone(), index.clone()  # the slot is reused: hand out copies
        with torch.cuda.device(self.device), torch.cuda.stream(stream):
            batch = tuple(t.to(self.device, non_blocking=True) for t in (images, text, index))
            done = torch.cuda.Event()
            done.record(stream)
        done.synchronize()  # in this thread: the slot is free and the batch is on the device when we return
        return batch  # type: ignore[return-value]

    def __iter__(self) -> Iterator[Batch]:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        batches = iter(self.batch_sampler)
        size = getattr(self.batch_sampler, "batch_size", None)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="clip_lab-loader")
        pending: deque[tuple[int, Future]] = deque()
        free = list(range(self.prefetch))

        def submit() -> None:
            pairs = next(batches, None)
            if pairs is not None:
                k = free.pop()
                pending.append((k, pool.submit(self._load, pairs, self._slot(k, size or len(pairs)), stream)))

        try:
            for _ in range(self.prefetch):
                submit()
            while pending:
                k, future = pending.popleft()
                batch = future.result()
                free.append(k)
                submit()
                if cuda:
                    current = torch.cuda.current_stream(self.device)
                    for t in batch:
                        t.record_stream(current)  # allocated on the copy stream, used on the compute stream
                yield batch
        finally:
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=True)
