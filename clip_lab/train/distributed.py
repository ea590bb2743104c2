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


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' rows in rank order forward; backward, the sum over ranks of the gradient of this rank's rows."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = slice(dist.get_rank() * len(x), (dist.get_rank() + 1) * len(x))
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # An all-reduce of the whole (small: global batch x embedding) gradient, then this rank's rows: the same on
        # every backend. torch.distributed.nn's gather emulates this on gloo with asynchronous scatters whose
        # threads abort the process at exit now and then.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """All ranks' `x` concatenated in rank order; the gradient of each piece flows back to the rank that made it.

    Every rank then computes the same loss over the global batch; the gather's backward sums the ranks' gradients
    and DDP averages them, which together give exactly one process's gradient over the global batch (as open_clip).
    Every rank's `x` must have the same shape (the training sampler gives every rank the same batch size).
    """
    if world()[1] == 1:
        return x
    return _GatherWithGrad.apply(x.contiguous())


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
