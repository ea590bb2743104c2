"""A projection head trained on frozen, cached image features against cached caption embeddings: seconds per run."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clip_lab.data.sampling import PairBatchSampler
from clip_lab.models.image import build_head
from clip_lab.models.loss import InfoNCE
from clip_lab.train.optim import adamw, clamp_logit_scale, warmup_cosine


@dataclass
class Pairs:
    """A split's frozen image features and its caption embeddings, both on the training device.

    `images` are the rows that may be used (readable images); image i owns captions `start[i]:start[i + 1]`.
    """

    features: Tensor  # [n_images, feature_dim] float32
    captions: Tensor  # [n_captions, embed_dim] float32, L2-normalized
    caption_start: np.ndarray  # [n_images + 1]
    images: np.ndarray


class HeadModel(nn.Module):
    """A projection head and its learned temperature: features -> normalized embeddings in the text space."""

    def __init__(self, kind: str, in_dim: int, out_dim: int, hidden: int, temperature: float = 0.07) -> None:
        super().__init__()
        self.head = build_head(kind, in_dim, out_dim, hidden)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(self.head(features), dim=-1)


@dataclass
class HeadRun:
    model: HeadModel  # the state with the best validation score
    best_epoch: int
    history: list[dict[str, float]]  # per epoch: train loss, validation score
    seconds: float


def train_head(
    kind: str,
    train: Pairs,
    score: Callable[[HeadModel], float],
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    hidden: int = 2048,
    seed: int = 0,
    max_logit_scale: float = 100.0,
    warmup_fraction: float = 0.05,
) -> HeadRun:
    """Train a `kind` head with symmetric InfoNCE (each image once per epoch with a random caption) and the
    optimizer recipe of `fit` (`train.optim`: AdamW, warmup then cosine, the clamped temperature); keep the epoch
    whose `score` (validation R-sum) is best."""
    device = train.features.device
    torch.manual_seed(seed)
    model = HeadModel(kind, train.features.shape[1], train.captions.shape[1], hidden).to(device)
    optimizer = adamw(model.named_parameters(), lr, weight_decay)
    sampler = PairBatchSampler(
        train.caption_start, batch_size, "image", shuffle=True, drop_last=True, seed=seed, images=train.images
    )
    scheduler = warmup_cosine(optimizer, epochs * len(sampler), warmup_fraction)
    loss_fn = InfoNCE()
    best, best_score, best_epoch, history = copy.deepcopy(model), -math.inf, -1, []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        model.train()
        losses = []
        for batch in sampler:
            pairs = torch.as_tensor(batch, device=device)
            loss, _ = loss_fn(model(train.features[pairs[:, 0]]), train.captions[pairs[:, 1]], model.logit_scale.exp())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            clamp_logit_scale(model.logit_scale, max_logit_scale)
            losses.append(loss.detach())
        model.eval()
        value = score(model)
        history.append(
            {"epoch": epoch, "train_loss": torch.stack(losses).mean().item() if losses else math.nan, "val_rsum": value}
        )
        if value > best_score:
            best, best_score, best_epoch = copy.deepcopy(model), value, epoch
    return HeadRun(best.eval(), best_epoch, history, time.perf_counter() - t0)
