"""Several processes as one: the global batch for the loss (gradients through the gather), evaluation gathered."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: Tensor) -> Tensor:
    """All ranks' `x` concatenated in rank order; the gradient of each piece flows back to the rank that made it.

    Every rank then computes the same loss over the global batch; the gather's backward sums the ranks' gradients
    and DDP averages them, which together give exactly one process's gradient over the global batch (as open_clip).
    """
    if world()[1] == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_rows(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Concatenate each tensor's rows over all ranks (ranks may hold different counts; no gradient)."""
    if world()[1] == 1:
        return tensors
    n = torch.tensor([len(tensors[0])], device=tensors[0].device)
    counts = [torch.zeros_like(n) for _ in range(world()[1])]
    dist.all_gather(counts, n)  # one sync, at the end of an evaluation
    most = int(max(c.item() for c in counts))
    out = []
    for t in tensors:
        padded = t.new_zeros((most, *t.shape[1:]))
        padded[: len(t)] = t
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded.contiguous())
        out.append(torch.cat([p[: int(c.item())] for p, c in zip(parts, counts)]))
    return tuple(out)
