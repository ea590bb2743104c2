"""Plain nn.Modules: the image encoder (a torchvision backbone without its classifier) and the projection heads."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from clip_lab.errors import ClipLabError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_backbone(name: str, weights: str | None, image_size: int = 224) -> nn.Module:
    """`torchvision.models.get_model(name, weights=...)`, failing with a clear message when weights are not available.

    `weights=None` means random initialization, and only then: a failed download never falls back to it.
    `image_size` matters only to Vision Transformers, whose position embeddings fix the input size (convolutional
    backbones pool whatever size they get): a randomly initialized ViT is built for it; pretrained ViT weights
    exist for 224 px only.
    """
    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise ClipLabError(
            f"unknown backbone {name!r}; choose one of torchvision.models.list_models(), e.g. "
            "resnet50, resnet18, mobilenet_v3_small, convnext_tiny, vit_b_16"
        ) from None
    size = {}
    if name.startswith("vit_") and image_size != 224:
        if weights is not None:
            raise ClipLabError(
                f"{name}'s pretrained weights are for 224 px images, not data.image_size {image_size}; "
                "set data.image_size: 224 (and data.cache_image_size: 256) or model.weights: null"
            )
        size = {"image_size": image_size}
    if weights is None:
        return builder(weights=None, **size)
    try:
        enum = torchvision.models.get_model_weights(name)[weights]
    except KeyError:
        options = ", ".join(w.name for w in torchvision.models.get_model_weights(name))
        raise ClipLabError(f"{name} has no weights {weights!r}; choose one of: {options}, or null for none") from None
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    try:
        return builder(weights=enum)
    except Exception as e:  # offline: URLError, socket errors, partial files
        raise ClipLabError(
            f"cannot load ImageNet weights {name}.{weights}: {file} is missing and the download failed "
            f"({type(e).__name__}). Fix: download {enum.url} on a machine with internet and put it at {file} "
            "(TORCH_HOME moves that folder), or set model.weights: null to train from random initialization"
        ) from e


def strip_classifier(model: nn.Module) -> int:
    """Replace the model's last nn.Linear (its classifier) with Identity; return that layer's input width.

    Works for every torchvision classification model (ResNet `fc`, MobileNet/ConvNeXt `classifier[-1]`, ViT `heads`),
    so the feature width is discovered, not hard-coded.
    """
    name, layer = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent = model.get_submodule(name.rpartition(".")[0])
    setattr(parent, name.rpartition(".")[2], nn.Identity())
    return layer.in_features


RESNET_STAGES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")  # torchvision ResNet/ResNeXt/Wide ResNet


class ImageEncoder(nn.Module):
    """uint8 images `[B, 3, H, W]` -> pooled backbone features `[B, out_dim]`; normalization happens here, on device.

    `freeze_stages=k` freezes a ResNet's stem and its first k - 1 residual stages (1: the stem alone; 5: all of
    it): no gradients, and their BatchNorm statistics stay those of the pretrained weights.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        weights: str | None = "IMAGENET1K_V2",
        freeze_stages: int = 0,
        image_size: int = 224,
    ) -> None:
        super().__init__()
        self.trunk = build_backbone(backbone, weights, image_size)
        self.out_dim = strip_classifier(self.trunk)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self.channels_last = False
        self.frozen = self._freeze(backbone, freeze_stages)

    def _freeze(self, backbone: str, stages: int) -> list[nn.Module]:
        if stages <= 0:
            return []
        if not all(hasattr(self.trunk, name) for name in RESNET_STAGES):
            raise ClipLabError(
                f"freeze_stages needs a ResNet-family backbone (conv1, bn1, layer1-4); {backbone} is "
                "not one: set model.freeze_stages: 0"
            )
        if stages > 5:
            raise ClipLabError(f"freeze_stages is {stages}; a ResNet has 5 stages (the stem, then layer1-4)")
        frozen = [getattr(self.trunk, name) for name in RESNET_STAGES[: stages + 1]]  # the stem is conv1 + bn1
        for module in frozen:
            module.requires_grad_(False)
        return frozen

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        for module in self.frozen:  # frozen stages keep their pretrained BatchNorm statistics
            module.eval()
        return self

    def use_channels_last(self) -> None:
        """Weights and inputs in channels_last (NHWC): the layout cuDNN's bf16 convolutions run fastest in."""
        self.to(memory_format=torch.channels_last)
        self.channels_last = True

    def forward(self, images: Tensor) -> Tensor:
        x = (images.float() - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.trunk(x)


NORMS = {None: nn.Identity, "none": nn.Identity, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


class ProjectionHead(nn.Module):
    """Linear -> [norm] -> GELU -> Linear, from backbone features to the text embedding width.

    `norm`: None (the lab baseline), "batch" (BatchNorm1d, the lab's ablation) or "layer" (LayerNorm).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, norm: str | None = None) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ClipLabError(f"unknown head norm {norm!r}; choose one of: null, batch, layer")
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), NORMS[norm](hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


HEADS = ("mlp", "linear")


def build_head(kind: str, in_dim: int, out_dim: int, hidden_dim: int = 2048, norm: str | None = None) -> nn.Module:
    """The projection from image features into the text embedding space: "mlp" (`ProjectionHead`, the lab's) or
    "linear" (one bias-free matrix, the form of CLIP's own visual projection; `hidden_dim` and `norm` unused)."""
    if kind == "mlp":
        return ProjectionHead(in_dim, out_dim, hidden_dim, norm)
    if kind == "linear":
        return nn.Linear(in_dim, out_dim, bias=False)
    raise ClipLabError(f"unknown head {kind!r}; choose one of: {', '.join(HEADS)}")
