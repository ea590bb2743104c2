"""The one optimizer recipe of every trained model (fit and the heads on cached features): AdamW parameter groups,
linear warmup then cosine decay to zero, and CLIP's clamp of the learned temperature."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR


def decays(name: str, p: Tensor) -> bool:
    """Weight decay on weight matrices only: none on biases, norms, the temperature or embedding tables (decay would
    pull rare words' rows to zero)."""
    return p.ndim >= 2 and "embedding" not in name


def adamw(
    named: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    part_lrs: dict[str, float] | None = None,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `named`: those whose name starts with a key of `part_lrs` at that
    learning rate, the rest at `lr`; each part with and without weight decay (`decays`)."""
    part_lrs = part_lrs or {}
    groups: dict[tuple[str, bool], list[Tensor]] = {}
    for name, p in named:
        if p.requires_grad:
            part = next((prefix for prefix in part_lrs if name.startswith(prefix)), "")
            groups.setdefault((part, decays(name, p)), []).append(p)
    return torch.optim.AdamW(
        [
            {"params": ps, "lr": part_lrs.get(part, lr), "weight_decay": weight_decay if decay else 0.0}
            for (part, decay), ps in groups.items()
        ],
        fused=fused,
    )


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per optimizer step: linear warmup over `warmup_fraction` of `total_steps`, then cosine decay to zero."""
    total = max(1, total_steps)
    warmup = int(warmup_fraction * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return LambdaLR(optimizer, factor)


@torch.no_grad()
def clamp_logit_scale(logit_scale: nn.Parameter, max_scale: float) -> None:
    """CLIP clamps the learned logit scale (1 / temperature) at `max_scale` after every step."""
    logit_scale.clamp_(max=math.log(max_scale))
