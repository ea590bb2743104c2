"""The frozen CLIP image tower: uint8 squares in, CLIP's pooled features and normalized image embedding out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clip_lab.errors import ClipLabError
from clip_lab.models.text import TEXT_FAMILIES, load_model, load_pretrained, text_family


class ClipImageTower(nn.Module):
    """Frozen `CLIPVisionModelWithProjection` with CLIP's preprocessing done on tensors, on the model's device.

    `forward` returns the pooled output (post-layernorm class token, what `visual_projection` consumes; width
    `feature_dim`) and CLIP's own L2-normalized image embedding (width `embed_dim`, comparable with the text tower's).
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        from transformers import AutoConfig, CLIPImageProcessor, CLIPVisionModelWithProjection

        self.name = name
        if text_family(load_pretrained(AutoConfig, name), name) is not TEXT_FAMILIES["clip"]:
            raise ClipLabError(
                f"{name} is not a CLIP model: the image tower of the zero-shot and head baselines is CLIP's "
                "(SigLIP, BLIP and ALIGN can be the frozen text tower of fit); pass a CLIP model as data.text_model"
            )
        self.model = load_model(CLIPVisionModelWithProjection, name).eval().requires_grad_(False)
        processor = load_pretrained(CLIPImageProcessor, name)
        config = self.model.config
        self.feature_dim = int(config.hidden_size)
        self.embed_dim = int(config.projection_dim)
        self.input_size = int(config.image_size)  # the position embeddings fix it
        # non-persistent buffers: they follow .to(device) but stay out of any state_dict
        self.register_buffer("mean", torch.tensor(processor.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(processor.image_std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ClipImageTower:
        return super().train(False)  # frozen: dropout and friends stay off whatever the caller asks

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 `[B, 3, S, S]` -> CLIP's pixel_values `[B, 3, input_size, input_size]` float32.

        CLIP resizes the short side to `input_size` (bicubic) and centre-crops; our caches already hold the central
        square, so a bicubic resize of the square is the same thing. Antialiased, rounded and clipped to uint8
        levels as PIL's resize returns them, then scaled to [0, 1] and normalized with the processor's mean and std.
        """
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
            raise ValueError(f"expected uint8 square images [B, 3, S, S], got {tuple(images.shape)}")
        x = images.to(self.mean.device, non_blocking=True).float()  # move as uint8: a quarter of the bytes
        if x.shape[-1] != self.input_size:
            x = (
                F.interpolate(
                    x, size=(self.input_size, self.input_size), mode="bicubic", antialias=True, align_corners=False
                )
                .round_()
                .clamp_(0, 255)
            )
        return (x / 255 - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 `[B, 3, S, S]` -> (pooled `[B, feature_dim]`, embeds `[B, embed_dim]` L2-normalized), float32."""
        pixels = self.preprocess(images)
        cuda = pixels.device.type == "cuda"
        with torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=cuda):
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            embeds = self.model.visual_projection(pooled)
        return pooled.float(), F.normalize(embeds.float(), dim=-1)
