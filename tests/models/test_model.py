"""Image encoder, projection head and the LightningModule: shapes, normalization, gradients, weights handling."""

import urllib.error

import pytest
import torch

from clip_lab.errors import ClipLabError
from clip_lab.models.image import build_backbone, strip_classifier
from clip_lab.train.module import ClipLab


@pytest.mark.parametrize("name,width", [("resnet18", 512), ("mobilenet_v3_small", 1024)])
def test_classifier_stripped_and_width_discovered(name, width):
    model = build_backbone(name, None)
    assert strip_classifier(model) == width
    assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, width)


def test_module_outputs_unit_vectors_from_uint8():
    model = ClipLab(backbone="resnet18", weights=None, embed_dim=32, head_hidden=64)
    out = model(torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8))
    assert out.shape == (3, 32) and torch.isfinite(out).all()
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07)


def test_gradients_reach_exactly_the_trainable_parameters():
    torch.manual_seed(0)
    model = ClipLab(backbone="resnet18", weights=None, embed_dim=32, head_hidden=64)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    text = torch.nn.functional.normalize(torch.randn(4, 32), dim=1)
    loss, _ = model.loss(model(images), text, model.logit_scale.exp())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.requires_grad, name
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names == {"image_encoder", "head", "logit_scale"}  # no text tower inside the trained model


def test_missing_imagenet_weights_fail_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ClipLabError, match=r"resnet18\.IMAGENET1K_V1.*download https://.*weights: null"):
        build_backbone("resnet18", "IMAGENET1K_V1")


def test_unknown_backbone_and_weights_are_named():
    with pytest.raises(ClipLabError, match="unknown backbone 'resnet51'"):
        build_backbone("resnet51", None)
    with pytest.raises(ClipLabError, match="IMAGENET1K_V2"):
        build_backbone("resnet50", "IMAGENET9K")


def test_logit_scale_is_clamped_after_a_step():
    model = ClipLab(backbone="resnet18", weights=None, embed_dim=8, head_hidden=16, max_logit_scale=100.0)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.on_train_batch_end(None, None, 0)
    assert model.logit_scale.exp().item() == pytest.approx(100.0)


@pytest.mark.parametrize("norm,layer", [("batch", torch.nn.BatchNorm1d), ("layer", torch.nn.LayerNorm), (None, None)])
def test_head_norm_sits_between_the_linear_layers(norm, layer):
    model = ClipLab(backbone="resnet18", weights=None, embed_dim=8, head_hidden=16, head_norm=norm)
    kinds = [type(m) for m in model.head.net]
    assert kinds[0] is torch.nn.Linear and kinds[2] is torch.nn.GELU and kinds[3] is torch.nn.Linear
    assert kinds[1] is (layer or torch.nn.Identity)
    with pytest.raises(ClipLabError, match="unknown head norm"):
        ClipLab(backbone="resnet18", weights=None, embed_dim=8, head_norm="group")


def test_frozen_stages_get_no_gradient_and_keep_their_statistics():
    torch.manual_seed(0)
    model = ClipLab(backbone="resnet18", weights=None, embed_dim=8, head_hidden=16, freeze_stages=2).train()
    trunk = model.image_encoder.trunk
    stats = trunk.layer1[0].bn1.running_mean.clone(), trunk.layer2[0].bn1.running_mean.clone()
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    model.loss(model(images), text, model.logit_scale.exp())[0].backward()
    frozen = ("conv1", "bn1", "layer1")
    for name, p in model.image_encoder.trunk.named_parameters():
        if name.startswith(frozen):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
    assert torch.equal(trunk.layer1[0].bn1.running_mean, stats[0])  # frozen stage: statistics untouched
    assert not torch.equal(trunk.layer2[0].bn1.running_mean, stats[1])  # trained stage: statistics updated
    optimizer = model.build_optimizer()
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    with pytest.raises(ClipLabError, match="ResNet-family"):
        ClipLab(backbone="mobilenet_v3_small", weights=None, embed_dim=8, freeze_stages=1)
