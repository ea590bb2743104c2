"""The one optimizer recipe: parameter groups, the warmup + cosine schedule, the temperature clamp; fit and the heads
on cached features both use it."""

import math

import pytest
import torch

from clip_lab.train.heads import HeadModel
from clip_lab.train.module import ClipLab
from clip_lab.train.optim import adamw, clamp_logit_scale, warmup_cosine


def test_groups_decay_matrices_only_and_give_each_part_its_learning_rate():
    model = ClipLab(backbone="resnet18", weights=None, embed_dim=8, head_hidden=16, lr=1e-3, backbone_lr=1e-4)
    opt = model.build_optimizer()
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        group = by_param[id(p)]
        assert group["lr"] == (1e-4 if name.startswith("image_encoder.") else 1e-3), name
        assert group["weight_decay"] == (0.1 if p.ndim >= 2 else 0.0), name
    assert by_param[id(model.logit_scale)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in model.parameters())


def test_embedding_tables_and_frozen_parameters_are_left_out_of_decay_and_of_the_optimizer():
    net = torch.nn.ModuleDict({"word_embedding": torch.nn.Embedding(5, 3), "proj": torch.nn.Linear(3, 2)})
    net["proj"].bias.requires_grad_(False)
    opt = adamw(net.named_parameters(), lr=0.1, weight_decay=0.5)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay == {id(net["word_embedding"].weight): 0.0, id(net["proj"].weight): 0.5}


def test_warmup_then_cosine_to_zero():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    schedule = warmup_cosine(opt, total_steps=100, warmup_fraction=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # 10 warmup steps: 1/10 .. 10/10
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5)  # half way through the cosine
    assert lrs[99] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    no_warmup = warmup_cosine(torch.optim.SGD([p], lr=1.0), total_steps=10, warmup_fraction=0.0)
    assert no_warmup.get_last_lr()[0] == 1.0


def test_the_temperature_is_clamped_at_the_largest_logit_scale():
    head = HeadModel("linear", 4, 2, 8, temperature=0.001)  # a logit scale of 1000
    clamp_logit_scale(head.logit_scale, 100.0)
    assert head.logit_scale.exp().item() == pytest.approx(100.0)
    clamp_logit_scale(head.logit_scale, 200.0)  # below the bound: unchanged
    assert head.logit_scale.exp().item() == pytest.approx(100.0)
