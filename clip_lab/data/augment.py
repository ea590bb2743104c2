"""Image views computed on the device from uint8 NHWC batches: the evaluation centre crop and the training augmentation.

Batches arrive as the image cache stores them, `[B, S, S, 3]` uint8 with S a little above the model's input size.
Both functions return NCHW tensors in the 0-255 range (the image encoder normalizes). The augmentation is one
batched `grid_sample` (random resized crop and flip as one affine map per image) plus per-image colour factors:
a handful of kernels per batch whatever its size, no per-image work on the CPU, no host synchronization.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def center_crop(images: Tensor, size: int) -> Tensor:
    """`[B, S, S, 3]` uint8 -> the central `[B, 3, size, size]`: a view, no copy (channels innermost)."""
    s = images.shape[1]
    if size > s:
        raise ValueError(f"crop size {size} is larger than the stored images ({s}px): raise the cache's image size")
    top = (s - size) // 2
    return images[:, top : top + size, top : top + size].permute(0, 3, 1, 2)


def augment(
    images: Tensor,
    size: int,
    crop_scale: float = 1.0,
    flip: float = 0.0,
    jitter: float = 0.0,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random views of a uint8 `[B, S, S, 3]` batch -> float `[B, 3, size, size]` in 0-255 (float16 on CUDA).

    Args:
        crop_scale: random resized crop keeping an area fraction in `[crop_scale, 1]` of the stored image with an
            aspect ratio in `ratio`, resized to `size` (1.0: no random crop, the centre crop evaluation sees).
        flip: probability of a horizontal flip.
        jitter: brightness, contrast and saturation each scaled by a factor drawn from `[1 - jitter, 1 + jitter]`.
    """
    b, s = images.shape[0], images.shape[1]
    if crop_scale >= 1 and flip <= 0 and jitter <= 0:
        return center_crop(images, size).float()
    dev = images.device

    def uniform(lo: float, hi: float) -> Tensor:
        return torch.rand(b, device=dev, generator=generator) * (hi - lo) + lo

    if crop_scale < 1:
        area = uniform(crop_scale, 1.0)
        r = uniform(math.log(ratio[0]), math.log(ratio[1])).exp()
        w, h = (area * r).sqrt().clamp(max=1.0), (area / r).sqrt().clamp(max=1.0)  # fractions of the side
        cx, cy = uniform(-1, 1) * (1 - w), uniform(-1, 1) * (1 - h)  # crop centre, normalized coordinates
    else:
        w = h = torch.full((b,), size / s, device=dev)
        cx = cy = torch.zeros(b, device=dev)
    sign = torch.where(uniform(0, 1) < flip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sign, cx, h, cy
    # float16 on the GPU halves the memory traffic; 0-255 values keep 0.125 resolution, well below uint8's 1
    dtype = torch.float16 if images.is_cuda else torch.float32
    x = images.permute(0, 3, 1, 2).to(dtype)
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False).to(dtype)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if jitter > 0:
        x = color_jitter(
            x, uniform(1 - jitter, 1 + jitter), uniform(1 - jitter, 1 + jitter), uniform(1 - jitter, 1 + jitter)
        )
    return x


def color_jitter(x: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor) -> Tensor:
    """Brightness, contrast and saturation as torchvision applies them (in that order), one factor per image, 0-255.

    The three are linear, so they compose: with g = gray(x) and m = mean(g), the result is
    `c*b*s * x + c*b*(1 - s) * g + (1 - c)*b*m * (s + (1 - s) * sum(GRAY))`: two passes instead of six, clamped
    once at the end where torchvision clamps after each factor (they differ only where an intermediate saturates).
    """
    b, c, s = (f.to(x.dtype).view(-1, 1, 1, 1) for f in (brightness, contrast, saturation))
    gray = _gray(x)
    mean = (1 - c) * b * gray.mean(dim=(2, 3), keepdim=True) * (s + (1 - s) * sum(GRAY))
    return (x * (c * b * s) + gray * (c * b * (1 - s)) + mean).clamp_(0, 255)


GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _gray(x: Tensor) -> Tensor:
    return GRAY[0] * x[:, 0:1] + GRAY[1] * x[:, 1:2] + GRAY[2] * x[:, 2:3]
