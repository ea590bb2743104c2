"""Image-text retrieval metrics (Recall@K, median rank, MRR) under the standard many-captions-per-image protocol.

Protocol (the one of CLIP, ALIGN and LAION's CLIP_benchmark):
- image -> text: an image is retrieved correctly at K when ANY of its captions is among the K best-scoring captions.
  Its rank is the number of other images' captions that score at least as high as its best caption.
- text -> image: a caption is retrieved correctly at K when its own image is among the K best-scoring images.
  Its rank is the number of other images that score at least as high as its image.
Ties count against the model (a constant similarity gives recall ~0, never 1), so a degenerate model cannot look good.
Images without any caption have no image -> text ground truth: they are excluded from the image -> text metrics
(their count is reported as `i2t_n`) but stay in the gallery as distractors for text -> image.
Ranks are 0-based internally; the reported median rank is 1-based (1 = perfect), MRR is the mean of 1 / rank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

KS = (1, 5, 10)
RECALL_KEYS = tuple(f"{d}_R@{k}" for d in ("i2t", "t2i") for k in KS)  # a results table's columns
TABLE_KEYS = (*RECALL_KEYS, "rsum")


def retrieval_metrics(
    sim: Tensor, caption_image: Tensor, ks: Sequence[int] = KS, chunk_size: int = 1024
) -> dict[str, float]:
    """Metrics from a similarity matrix `sim[n_images, n_captions]`; `caption_image[j]` is the image index of caption j.

    Works block by block (`chunk_size` rows or columns at a time), so the temporary tensors stay small.
    """
    n_images, n_captions = sim.shape
    return _metrics(
        lambda rows: sim[rows], lambda cols: sim[:, cols], n_images, n_captions, caption_image, ks, chunk_size
    )


def embedding_retrieval_metrics(
    image_emb: Tensor, caption_emb: Tensor, caption_image: Tensor, ks: Sequence[int] = KS, chunk_size: int = 1024
) -> dict[str, float]:
    """Metrics for cosine similarity of (normalized) embeddings, never holding the full similarity matrix.

    At val2014 scale (40,504 x 202,654) the full matrix would take 33 GB in float32; blocks of `chunk_size` take
    `chunk_size * n_captions * 4` bytes. Blocks are computed in float32 on the embeddings' device.
    """
    image_emb, caption_emb = image_emb.float(), caption_emb.float()
    return _metrics(
        lambda rows: image_emb[rows] @ caption_emb.T,
        lambda cols: image_emb @ caption_emb[cols].T,
        image_emb.shape[0],
        caption_emb.shape[0],
        caption_image,
        ks,
        chunk_size,
    )


def _metrics(
    row_block: Callable[[slice], Tensor],
    col_block: Callable[[slice], Tensor],
    n_images: int,
    n_captions: int,
    caption_image: Tensor,
    ks: Sequence[int],
    chunk_size: int,
) -> dict[str, float]:
    caption_image = torch.as_tensor(caption_image, dtype=torch.long)
    if caption_image.shape != (n_captions,):
        raise ValueError(f"caption_image has shape {tuple(caption_image.shape)}, expected ({n_captions},)")
    if n_captions and (caption_image.min() < 0 or caption_image.max() >= n_images):
        raise ValueError(f"caption_image holds indices outside [0, {n_images})")

    i2t_rank, t2i_rank = [], []
    for start in range(0, n_images, chunk_size):
        rows = slice(start, min(start + chunk_size, n_images))
        block = row_block(rows).float()
        gt = caption_image.to(block.device)
        positive = gt[None, :] == torch.arange(rows.start, rows.stop, device=block.device)[:, None]
        best_positive = block.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
        rank = ((block >= best_positive) & ~positive).sum(dim=1)
        i2t_rank.append(rank[positive.any(dim=1)])  # images without captions have no i2t ground truth
    for start in range(0, n_captions, chunk_size):
        cols = slice(start, min(start + chunk_size, n_captions))
        block = col_block(cols).float()
        gt = caption_image[cols].to(block.device)
        own = block.gather(0, gt[None, :])
        # subtract the caption's own image, which always satisfies `>=` against itself
        t2i_rank.append((block >= own).sum(dim=0) - 1)

    out: dict[str, float] = {}
    for name, ranks in (("i2t", torch.cat(i2t_rank)), ("t2i", torch.cat(t2i_rank))):
        ranks = ranks.double().cpu()
        if ranks.numel() == 0:
            raise ValueError(f"no {name} queries: every image needs at least one caption for image->text")
        for k in ks:
            out[f"{name}_R@{k}"] = (ranks < k).double().mean().item()
        out[f"{name}_median_rank"] = torch.quantile(ranks + 1, 0.5).item()  # numpy's median: mean of the middle two
        out[f"{name}_MRR"] = (1.0 / (ranks + 1)).mean().item()
        out[f"{name}_n"] = int(ranks.numel())
    out["rsum"] = sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in ks)
    return out


def folded_retrieval_metrics(
    image_emb: Tensor, caption_emb: Tensor, caption_image: Tensor, folds: int = 1, ks: Sequence[int] = KS
) -> dict[str, float]:
    """`embedding_retrieval_metrics` averaged over `folds` consecutive blocks of the images.

    Each fold is a gallery of its own: its images and only their captions (COCO 1k: the 5k test images in five
    blocks of 1,000, the mean of the five results). Block sizes differ by at most one when `folds` does not divide
    the image count. `folds=1` is the plain metrics. Counts (`*_n`) are summed over folds, the rest averaged.
    """
    n = image_emb.shape[0]
    if not 1 <= folds <= n:
        raise ValueError(f"{n} images cannot be cut into {folds} folds")
    if folds == 1:
        return embedding_retrieval_metrics(image_emb, caption_emb, caption_image, ks)
    caption_image = torch.as_tensor(caption_image, dtype=torch.long)
    bounds = [n * f // folds for f in range(folds + 1)]
    results = []
    for lo, hi in zip(bounds, bounds[1:]):
        own = (caption_image >= lo) & (caption_image < hi)
        results.append(
            embedding_retrieval_metrics(
                image_emb[lo:hi], caption_emb[own.to(caption_emb.device)], caption_image[own] - lo, ks
            )
        )
    return {
        k: (sum(r[k] for r in results) if k.endswith("_n") else sum(r[k] for r in results) / folds) for k in results[0]
    }
