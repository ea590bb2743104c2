"""The cached-batch loader: every pair delivered once per epoch with its own rows, epochs reseeded, clean early exit."""

import threading

import numpy as np
import torch

from clip_lab.data.loader import CachedBatchLoader
from clip_lab.data.sampling import PairBatchSampler


def make_cache(tmp_path, n=37, side=4):
    pixels = np.random.default_rng(0).integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", pixels)
    return tmp_path / "images.npy", pixels


def test_batches_pair_each_image_with_its_own_rows(tmp_path):
    path, pixels = make_cache(tmp_path)
    counts = np.r_[np.full(30, 2), np.zeros(7, int)]  # the last 7 images have no caption
    start = np.concatenate([[0], np.cumsum(counts)])
    embeddings = torch.randn(int(start[-1]), 8).half()
    sampler = PairBatchSampler(start, batch_size=8, pairs="image", seed=1)
    loader = CachedBatchLoader(path, embeddings, sampler, threads=3, prefetch=2)
    seen = []
    for images, text, index in loader:
        assert images.dtype == torch.uint8 and images.shape[1:] == (4, 4, 3)
        assert torch.equal(images, torch.from_numpy(pixels[index.numpy()]))
        for row, i in enumerate(index.tolist()):
            assert any(torch.equal(text[row], embeddings[c]) for c in range(start[i], start[i + 1]))
        seen += index.tolist()
    assert sorted(seen) == list(range(30)) and len(loader) == 4
    first = [b[2].tolist() for b in loader]
    sampler.set_epoch(1)
    assert [b[2].tolist() for b in loader] != first  # a new epoch, a new shuffle


def test_captionless_images_get_zero_text_and_early_exit_stops_the_threads(tmp_path):
    path, pixels = make_cache(tmp_path)
    start = np.array([0, 1, 1, 2])  # image 1 has no caption
    embeddings = torch.ones(2, 8).half()
    sampler = PairBatchSampler(start, batch_size=2, pairs="first", shuffle=False, images=np.array([0, 1, 2]))
    images, text, index = next(iter(CachedBatchLoader(path, embeddings, sampler)))
    assert index.tolist() == [0, 1] and text[1].abs().sum() == 0 and text[0].abs().sum() == 8
    before = threading.active_count()
    long = PairBatchSampler(np.arange(38), batch_size=1, pairs="image", seed=0)
    it = iter(CachedBatchLoader(path, torch.ones(37, 8).half(), long, threads=4, prefetch=4))
    next(it)
    it.close()  # what Lightning does when it stops mid-epoch
    assert threading.active_count() <= before
