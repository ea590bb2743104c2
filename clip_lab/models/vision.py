"""Frozen pretrained image towers (CLIP, SigLIP, BLIP, ALIGN): uint8 squares in, pooled features and the normalized
image embedding out, each preprocessed on tensors as the family's own image processor does it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clip_lab.errors import ClipLabError
from clip_lab.models.text import load_model, load_pretrained, model_family

# PIL's resampling filters (the processors' `resample`) as torch's antialiased interpolation, which matches PIL's
RESAMPLE = {2: "bilinear", 3: "bicubic", "bilinear": "bilinear", "bicubic": "bicubic"}


@dataclass(frozen=True)
class Preprocess:
    """What a family's image processor does to a square image: resize to `resize`, centre-crop to `crop`, scale the
    uint8 levels to `levels * scale - offset`, normalize with `mean` and `std`."""

    resize: int | None  # the side a square is resized to (None: not resized)
    crop: int | None  # the centre crop's side after the resize (None: none)
    mode: str  # interpolation: "bicubic" or "bilinear"
    scale: float
    offset: float  # ALIGN's processor maps levels to [-1, 1] (rescale_offset): scale 1/127.5, offset 1
    mean: Sequence[float]
    std: Sequence[float]

    @property
    def input_size(self) -> int:
        return self.crop or self.resize

    @classmethod
    def of_processor(cls, processor: Any, name: str) -> Preprocess:
        """The preprocessing a Hugging Face image processor (CLIP's, SigLIP's, BLIP's, EfficientNet's) applies."""

        def side(size: Any, what: str) -> int:
            if isinstance(size, int):
                return size
            size = dict(size)
            if "shortest_edge" in size:
                return int(size["shortest_edge"])
            if size.get("height") != size.get("width"):
                raise ClipLabError(f"{name}: its processor's {what} is {size}: only square inputs are supported")
            return int(size["height"])

        resample = getattr(processor, "resample", 3)
        resample = getattr(resample, "value", resample)
        if resample not in RESAMPLE:
            raise ClipLabError(f"{name}: its processor resamples with filter {resample}: only bicubic and bilinear")
        resize = side(processor.size, "size") if getattr(processor, "do_resize", True) else None
        crop = side(processor.crop_size, "crop_size") if getattr(processor, "do_center_crop", False) else None
        if resize is None and crop is None:  # the model's input side would be whatever the cached squares are
            raise ClipLabError(f"{name}: its processor neither resizes nor crops: set do_resize in its config")
        rescale = getattr(processor, "do_rescale", True)
        normalize = getattr(processor, "do_normalize", True)
        mean = list(processor.image_mean) if normalize else [0.0] * 3
        std = list(processor.image_std) if normalize else [1.0] * 3
        if getattr(processor, "include_top", False):  # EfficientNet's processor divides by the std a second time
            std = [s * t for s, t in zip(std, processor.image_std)]
        return cls(
            resize,
            crop,
            RESAMPLE[resample],
            float(processor.rescale_factor) if rescale else 1.0,
            1.0 if rescale and getattr(processor, "rescale_offset", False) else 0.0,
            mean,
            std,
        )


def resize_like_pil(x: Tensor, side: int, mode: str) -> Tensor:
    """Float `[B, C, S, S]` uint8 levels -> `[B, C, side, side]` levels, as PIL's (and torchvision's uint8) resize.

    PIL resamples the width, stores the result as uint8, then resamples the height: a bicubic overshoot is clipped
    between the passes. One 2-D float interpolation skips that clip and differs by up to ~20 levels on sharp
    detail; two 1-D passes, each rounded and clipped, agree with PIL within one level, on any device.
    """
    for size in ((x.shape[-2], side), (side, side)):
        x = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False).round_().clamp_(0, 255)
    return x


class ImageTower(nn.Module):
    """A frozen pretrained image tower. `forward` takes uint8 `[B, 3, S, S]` squares and returns (pooled features
    `[B, feature_dim]`, the model's own L2-normalized image embedding `[B, embed_dim]`), float32.

    `pooled` is what a head baseline trains on: the input of the family's image projection where it has one (CLIP,
    BLIP), else the embedding itself (SigLIP, ALIGN). `logit_scale` and `logit_bias` are the model's zero-shot
    scoring: softmax of `logit_scale * cosine` over classes, or with a bias (SigLIP), each class's sigmoid of
    `logit_scale * cosine + logit_bias`.
    """

    model: nn.Module

    def __init__(
        self,
        name: str,
        preprocess: Preprocess,
        feature_dim: int,
        embed_dim: int,
        logit_scale: float,
        logit_bias: float | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.preprocessing = preprocess
        self.feature_dim, self.embed_dim = feature_dim, embed_dim
        self.logit_scale, self.logit_bias = logit_scale, logit_bias
        # non-persistent buffers: they follow .to(device) but stay out of any state_dict
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, 3, 1, 1), persistent=False)

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    def train(self, mode: bool = True) -> ImageTower:
        return super().train(False)  # frozen: dropout and friends stay off whatever the caller asks

    def features(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """pixel values -> (pooled, unnormalized embedding)."""
        raise NotImplementedError

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 `[B, 3, S, S]` -> the family's pixel values `[B, 3, input_size, input_size]`, float32.

        Our caches hold each image's central square, so a processor's resize of the short side (CLIP) or of both
        sides (SigLIP, BLIP, ALIGN) is a resize of the square. Antialiased, rounded and clipped to uint8 levels as
        the processors' resize returns them, centre-cropped, then scaled and normalized as the processor does.
        """
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
            raise ValueError(f"expected uint8 square images [B, 3, S, S], got {tuple(images.shape)}")
        p = self.preprocessing
        x = images.to(self.mean.device, non_blocking=True).float()  # move as uint8: a quarter of the bytes
        if p.resize is not None and x.shape[-1] != p.resize:
            x = resize_like_pil(x, p.resize, p.mode)
        if p.crop is not None and p.crop < x.shape[-1]:
            top = int(round((x.shape[-1] - p.crop) / 2.0))  # where the processors' centre crop starts
            x = x[..., top : top + p.crop, top : top + p.crop]
        return (x * p.scale - p.offset - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        pixels = self.preprocess(images)
        cuda = pixels.device.type == "cuda"
        with torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=cuda):
            pooled, embeds = self.features(pixels)
        return pooled.float(), F.normalize(embeds.float(), dim=-1)


def _clip(m: Any, px: Tensor) -> tuple[Tensor, Tensor]:
    pooled = m.vision_model(pixel_values=px).pooler_output  # post-layernorm class token (CLIPModel.get_image_features)
    return pooled, m.visual_projection(pooled)


def _siglip(m: Any, px: Tensor) -> tuple[Tensor, Tensor]:
    pooled = m.vision_model(
        pixel_values=px
    ).pooler_output  # the attention-pooling head (SiglipModel.get_image_features)
    return pooled, pooled


def _blip(m: Any, px: Tensor) -> tuple[Tensor, Tensor]:
    pooled = m.vision_model(pixel_values=px).last_hidden_state[:, 0]  # [CLS] (BlipForImageTextRetrieval, ITC side)
    return pooled, m.vision_proj(pooled)


@dataclass(frozen=True)
class ImageFamily:
    """How one family's image tower and zero-shot scoring are read, as the family's own model reads them."""

    model_class: str  # the full model's transformers class (both towers, the scale; its config's model_type is the key)
    features: Callable[[Any, Tensor], tuple[Tensor, Tensor]]  # (model, pixel_values) -> (pooled, embedding)
    scale: Callable[[Any], tuple[float, float | None]]  # model -> (logit scale, logit bias or None for a softmax)
    text_parts: tuple[str, ...]  # the full model's text side, dropped once loaded (the text encoder loads its own)


IMAGE_FAMILIES = {
    "clip": ImageFamily(
        "CLIPModel", _clip, lambda m: (float(m.logit_scale.exp()), None), ("text_model", "text_projection")
    ),
    "siglip": ImageFamily(
        "SiglipModel", _siglip, lambda m: (float(m.logit_scale.exp()), float(m.logit_bias)), ("text_model",)
    ),
    # AlignModel.get_image_features: the EfficientNet's pooled output, no projection; logits = cosine / temperature
    "align": ImageFamily(
        "AlignModel", _siglip, lambda m: (1 / float(m.temperature), None), ("text_model", "text_projection")
    ),
    # BLIP's retrieval model keeps no learned temperature: the config's initial one (1/0.07), BLIP's ITC scale
    "blip": ImageFamily(
        "BlipForImageTextRetrieval",
        _blip,
        lambda m: (math.exp(m.config.logit_scale_init_value), None),
        ("text_encoder", "text_proj", "itm_head"),
    ),
}


class HFImageTower(ImageTower):
    """A Hugging Face model's frozen image tower (a full checkpoint of one of IMAGE_FAMILIES), preprocessed as its
    own image processor (`AutoImageProcessor` of the same folder or id) preprocesses."""

    def __init__(self, name: str) -> None:
        import transformers
        from transformers import AutoConfig, AutoImageProcessor

        config = load_pretrained(AutoConfig, name)
        key = model_family(config, name)
        family = IMAGE_FAMILIES[key]
        if config.model_type != key:  # a tower's own config (clip_text_model, ...): the full model's weights are absent
            raise ClipLabError(
                f"{name} holds a {config.model_type} alone: its image tower would stay random. Fix: point it at a "
                f"checkpoint of the whole {key} model (both towers, e.g. saved from {family.model_class})"
            )
        model = load_model(getattr(transformers, family.model_class), name).eval().requires_grad_(False)
        preprocess = Preprocess.of_processor(load_pretrained(AutoImageProcessor, name), name)
        with torch.no_grad():
            side = preprocess.input_size
            pooled, embeds = family.features(model, torch.zeros(1, 3, side, side))
        super().__init__(name, preprocess, int(pooled.shape[1]), int(embeds.shape[1]), *family.scale(model))
        for part in family.text_parts:  # its text side's memory is given back: only the image side runs here
            setattr(model, part, None)
        self.family = family
        self.model = model

    def features(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        return self.family.features(self.model, pixels)
