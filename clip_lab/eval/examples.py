"""What `test` keeps for the report: retrieval examples, a small similarity matrix and a sample of embeddings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clip_lab.data.split import CaptionedSplit


def test_examples(
    image_emb: Tensor,
    caption_emb: Tensor,
    caption_image: Tensor,
    split: CaptionedSplit,
    images: np.ndarray,
    captions: np.ndarray,
    n: int = 8,
    k: int = 5,
    sample: int = 500,
    seed: int = 0,
    image_ref: Callable[[int], dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(examples for `test_examples.json`, embeddings for `test_embeddings.pt`).

    `image_emb[p]` is image `images[p]` of `split`; `caption_emb[j]` is caption `captions[j]`, of image position
    `caption_image[j]`. Examples: `n` seeded images with their true captions and the top `k` retrieved ones; the
    similarity of those images with their first captions; up to `sample` images with their first captions' embeddings.
    `image_ref(i)` says where the figures find image i of `split` again (default: its file).
    """
    caption_image = caption_image.to(image_emb.device)
    has_caption = torch.zeros(len(image_emb), dtype=torch.bool, device=image_emb.device)
    has_caption[caption_image] = True
    candidates = torch.nonzero(has_caption).flatten().cpu().numpy()
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(candidates, size=min(sample, len(candidates)), replace=False))
    first = torch.full((len(image_emb),), -1, dtype=torch.long, device=image_emb.device)
    order = torch.arange(len(caption_image), device=caption_image.device)
    first.scatter_reduce_(0, caption_image, order, reduce="amin", include_self=False)  # each image's first caption

    def image_info(p: int) -> dict[str, Any]:
        i = int(images[p])
        return {
            "image_id": int(split.image_ids[i]),
            **(image_ref(i) if image_ref else {"file": str(split.image_path(i))}),
        }

    shown = picked[np.sort(rng.choice(len(picked), size=min(n, len(picked)), replace=False))]
    sims = image_emb[torch.as_tensor(shown, device=image_emb.device)].float() @ caption_emb.float().T
    top = sims.topk(min(k, sims.shape[1]), dim=1)
    retrieval = []
    for row, p in enumerate(shown.tolist()):
        truth = torch.nonzero(caption_image == p).flatten().tolist()
        retrieved = [
            {
                "caption": split.captions[captions[j]],
                "image_id": image_info(int(caption_image[j]))["image_id"],
                "score": float(s),
                "correct": int(caption_image[j]) == p,
            }
            for s, j in zip(top.values[row].tolist(), top.indices[row].tolist())
        ]
        retrieval.append(
            {**image_info(p), "captions": [split.captions[captions[j]] for j in truth], "retrieved": retrieved}
        )
    pair = first[torch.as_tensor(shown, device=first.device)]
    matrix = image_emb[torch.as_tensor(shown, device=image_emb.device)].float() @ caption_emb[pair].float().T
    examples = {
        "retrieval": retrieval,
        "similarity": {
            "images": [image_info(p) for p in shown.tolist()],
            "captions": [split.captions[captions[j]] for j in pair.tolist()],
            "matrix": matrix.cpu().tolist(),
        },
    }
    rows = torch.as_tensor(picked, device=image_emb.device)
    embeddings = {
        "image": image_emb[rows].half().cpu(),
        "caption": caption_emb[first[rows]].half().cpu(),
        "image_ids": torch.as_tensor(split.image_ids[images[picked]]),
    }
    return examples, embeddings
