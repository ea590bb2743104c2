"""The one scoring path: embeddings of a data split's evaluated images against its captions, under its protocol.

`test`, validation, `baselines` and the benchmark all score through here, so a number means the same everywhere.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from clip_lab.eval.metrics import embedding_retrieval_metrics, folded_retrieval_metrics

FIRST_CAPTION_PROTOCOL = (
    "first caption only (what most course submissions report; NOT comparable with published numbers): each "
    "image is paired with its first caption alone and recall is read off the diagonal of that square matrix, so "
    "an image's other captions are not in the gallery; ties count against the model"
)


class Evaluated(Protocol):
    """What scoring needs of the data (`RetrievalData`): the evaluated captions and the test protocol."""

    protocol: Any

    def retrieval_targets(self, stage: str, embed: Any = None) -> tuple[Tensor, Tensor]: ...


def score(image_emb: Tensor, caption_emb: Tensor, caption_image: Tensor, folds: int = 1) -> dict[str, float]:
    """Recall, ranks and MRR of images against captions (`caption_image[j]`: the row of caption j's image), as the
    mean over `folds` galleries; with the gallery's `n_images` and `n_captions`."""
    metrics = folded_retrieval_metrics(
        image_emb, caption_emb.to(image_emb.device), caption_image.to(image_emb.device), folds
    )
    return metrics | {"n_images": len(image_emb), "n_captions": len(caption_image)}


def score_split(
    data: Evaluated, stage: str, image_emb: Tensor, targets: tuple[Tensor, Tensor] | None = None
) -> dict[str, float]:
    """`score` of `image_emb` (the images of `data.eval_images(stage)`, in that order) against their captions
    (`targets`: `data.retrieval_targets(stage, ...)`, read here for cached embeddings when not given): under the
    test protocol (its folds) for test, over the one validation gallery for validation."""
    caption_emb, caption_image = targets if targets is not None else data.retrieval_targets(stage)
    folds = data.protocol.folds if stage == "test" else 1  # validation ranks checkpoints: one gallery
    return score(image_emb, caption_emb, caption_image, folds)


def score_first_captions(image_emb: Tensor, first_caption: Tensor) -> dict[str, float]:
    """The diagonal protocol (`FIRST_CAPTION_PROTOCOL`): image i against the first captions of all images, caption i
    belonging to image i. The same metrics with one caption per image: only the gallery differs from the standard
    protocol. Images without captions (a row of zeros) are left out."""
    has_caption = first_caption.abs().sum(dim=1) > 0
    image_emb, first_caption = image_emb[has_caption], first_caption[has_caption]
    diagonal = torch.arange(len(image_emb), device=image_emb.device)
    metrics = embedding_retrieval_metrics(image_emb, first_caption.to(image_emb.dtype), diagonal)
    return metrics | {"n_images": len(image_emb), "n_captions": len(image_emb)}
