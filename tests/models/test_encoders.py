"""Other torchvision image encoders by name: width discovered, gradients everywhere, overlays that name real weights,
a Vision Transformer built for the data's image size, and a fit through the CLI with one of them."""

import json

import pytest
import torch
import torchvision
import yaml
from cli_args import fit_args

from clip_lab.__main__ import main
from clip_lab.errors import ClipLabError
from clip_lab.files import CONFIGS
from clip_lab.models.image import build_backbone
from clip_lab.train.module import ClipLab

WIDTHS = {"mobilenet_v3_small": 1024, "convnext_tiny": 768, "vit_b_16": 768}  # what torchvision's models give


@pytest.mark.parametrize("backbone", list(WIDTHS))
def test_encoder_width_is_discovered_and_every_parameter_learns(backbone):
    torch.manual_seed(0)
    model = ClipLab(backbone=backbone, weights=None, embed_dim=8, head_hidden=16, image_size=32)
    assert model.image_encoder.out_dim == WIDTHS[backbone]
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    emb = model(images)
    assert emb.shape == (4, 8) and torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    loss, _ = model.train_loss(images, torch.nn.functional.normalize(torch.randn(4, 8), dim=1))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("overlay", sorted((CONFIGS / "encoders").glob("*.yaml")), ids=lambda p: p.stem)
def test_each_overlay_names_a_backbone_and_weights_torchvision_has(overlay):
    model = yaml.safe_load(overlay.read_text())["model"]
    assert set(model) == {"backbone", "weights"} and len(overlay.read_text().splitlines()) <= 6
    assert model["weights"] in {w.name for w in torchvision.models.get_model_weights(model["backbone"])}


def test_a_vit_is_built_for_the_image_size_and_pretrained_vits_need_224():
    vit = build_backbone("vit_b_16", None, image_size=48)
    assert vit.image_size == 48 and vit.encoder.pos_embedding.shape[1] == (48 // 16) ** 2 + 1
    with pytest.raises(ClipLabError, match="224 px images, not data.image_size 64"):
        build_backbone("vit_b_16", "IMAGENET1K_V1", image_size=64)


@pytest.mark.slow
def test_fit_with_another_encoder_through_the_cli(demo_root, tmp_path):
    vit = {"model.weights": "null", "model.head_hidden": 32}  # no pretrained weights, a small head
    short = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 2, "data.batch_size": 16, "data.val_images": 32}
    args = fit_args(demo_root, tmp_path, "vit", "encoders/vit_b_16.yaml", **vit, **short)
    assert main(args) == 0
    run = tmp_path / "results" / "vit"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["backbone"] == "vit_b_16"
    assert ckpt["hyper_parameters"]["image_size"] == 64  # linked from data.image_size: the ViT was built for it
    assert (run / "metrics.csv").is_file() and json.loads((run / "run_stats.json").read_text())["finished"]
