"""InfoNCE against closed-form values."""

import math

import pytest
import torch
import torch.nn.functional as F

from clip_lab.models.loss import InfoNCE


def test_equal_logits_give_log_batch():
    for batch in (1, 2, 7, 64):
        same = F.normalize(torch.ones(batch, 8), dim=1)  # every pair has cosine 1
        loss, _ = InfoNCE()(same, same, torch.tensor(10.0))
        assert loss.item() == pytest.approx(math.log(batch), abs=1e-6)


def test_two_by_two_closed_form():
    # orthogonal unit vectors: logits = s * I, so each row's softmax puts e^s / (e^s + 1) on the match
    e = torch.eye(2)
    for s in (0.5, 3.0, 14.3):
        loss, acc = InfoNCE()(e, e, torch.tensor(s))
        assert loss.item() == pytest.approx(math.log1p(math.exp(-s)), rel=1e-5, abs=1e-6)
        assert acc.item() == 1.0


def test_symmetric_average_of_both_directions():
    g = torch.Generator().manual_seed(0)
    img, txt = (F.normalize(torch.randn(5, 4, generator=g), dim=1) for _ in range(2))
    logits = 7.0 * img @ txt.T
    labels = torch.arange(5)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    loss, acc = InfoNCE()(img, txt, torch.tensor(7.0))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    both = ((logits.argmax(1) == labels).float().mean() + (logits.argmax(0) == labels).float().mean()) / 2
    assert acc.item() == pytest.approx(both.item())
