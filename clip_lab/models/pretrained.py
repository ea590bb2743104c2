"""Pretrained models by name, each family through one small adapter: `hf:<hub id or folder>` (CLIP, SigLIP, BLIP,
ALIGN; a bare id or folder means the same) and `open_clip:<arch>:<tag or file>` (`clip_lab.models.openclip`).

The frozen text tower of `fit`, the image tower of `baselines` and the zero-shot `PretrainedModel` that `search`,
`zeroshot` and `serve` read like a trained checkpoint all come from here.
"""

from __future__ import annotations

from torch import Tensor, nn

from clip_lab.models import openclip
from clip_lab.models.text import HF, TextEncoder, text_embed_dim, text_model_fingerprint
from clip_lab.models.vision import HFImageTower, ImageTower

FrozenText = TextEncoder | openclip.OpenClipText


def is_pretrained_name(name: str) -> bool:
    """Whether `name` names a pretrained model by its prefix (`hf:` or `open_clip:`) rather than a checkpoint file."""
    return str(name).startswith((HF, openclip.PREFIX))


def canonical(name: str) -> str:
    """The one spelling of a model's name that caches are named and checked by: `hf:` dropped (`hf:openai/x` and
    `openai/x` are one model), so a fit, the baselines and a search of the same model share their caches."""
    return str(name).removeprefix(HF)


def text_encoder(name: str, max_length: int = 77) -> FrozenText:
    """The frozen text tower of a pretrained model: L2-normalized caption and query embeddings (`encode`)."""
    return openclip.OpenClipText(name, max_length) if openclip.is_open_clip(name) else TextEncoder(name, max_length)


def image_tower(name: str) -> ImageTower:
    """The frozen image tower of a pretrained model, with the family's own preprocessing and zero-shot scale."""
    return openclip.OpenClipImageTower(name) if openclip.is_open_clip(name) else HFImageTower(name)


def embed_dim(name: str) -> int:
    """The width of the model's embeddings, read from its config alone."""
    return openclip.embed_dim(name) if openclip.is_open_clip(name) else text_embed_dim(name)


def fingerprint(name: str) -> str:
    """What identifies the weights behind `name` (caches built from them store it and are rebuilt when it changes)."""
    return openclip.fingerprint(name) if openclip.is_open_clip(name) else text_model_fingerprint(name)


def short_name(name: str) -> str:
    """A model's name without its ecosystem and owner: `hf:google/siglip-base-patch16-224` -> `siglip-base-patch16-224`,
    `open_clip:ViT-B-32:openai` -> `ViT-B-32-openai`."""
    if openclip.is_open_clip(name):
        arch, pretrained = openclip.parse(name)
        arch = arch.rstrip("/").rsplit("/", 1)[-1].split(":")[-1]
        return f"{arch}-{pretrained.rstrip('/').rsplit('/', 1)[-1]}" if pretrained else arch
    return name.removeprefix(HF).rstrip("/").rsplit("/", 1)[-1]


class PretrainedModel(nn.Module):
    """A pretrained model's image tower, read by inference as a trained `ClipLab` is: `embed_squares` gives its own
    image embedding of whole cached squares (the family's preprocessing resizes them), `text_tower` is None (its
    text tower is the frozen one named by the data's `text_model`, which is this model)."""

    text_tower = None

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.image = image_tower(name)

    @property
    def embed_dim(self) -> int:
        return self.image.embed_dim

    def zero_shot_scale(self) -> tuple[float, float | None]:
        """(logit scale, logit bias or None): the model's own scoring of a cosine (see `ImageTower`)."""
        return self.image.logit_scale, self.image.logit_bias

    def embed_squares(self, squares: Tensor, image_size: int) -> Tensor:
        """uint8 `[B, S, S, 3]` squares -> the model's unit image embeddings `[B, embed_dim]` (`image_size` unused:
        the family's processor, not the trained model's centre crop, decides what is seen)."""
        return self.image(squares.permute(0, 3, 1, 2))[1]
