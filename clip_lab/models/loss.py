"""Symmetric InfoNCE (the CLIP loss) over a batch of matched image and text embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class InfoNCE(nn.Module):
    """Cross-entropy of image->text and text->image logits with the matching pair on the diagonal, averaged.

    Inputs are L2-normalized embeddings `[B, D]` and the logit scale (1 / temperature, already exponentiated).
    Returns the loss and the in-batch top-1 accuracy of both directions, as tensors (no host sync).
    """

    def forward(self, image: Tensor, text: Tensor, logit_scale: Tensor) -> tuple[Tensor, Tensor]:
        logits = logit_scale * image.float() @ text.float().T
        labels = torch.arange(logits.shape[0], device=logits.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        with torch.no_grad():
            acc = ((logits.argmax(1) == labels).float().mean() + (logits.argmax(0) == labels).float().mean()) / 2
        return loss, acc
