"""Head-only training on cached features: a known linear map is learned, the best validation epoch is kept."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_lab.errors import ClipLabError
from clip_lab.eval.metrics import embedding_retrieval_metrics
from clip_lab.train.heads import Pairs, train_head


def linear_world(n_images: int, seed: int, captions_per_image: int = 3):
    """Features whose captions are a fixed linear map of them plus a little noise: a linear head can be exact."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(24, 16, generator=torch.Generator().manual_seed(99))  # the same map for every split
    x = torch.randn(n_images, 24, generator=g)
    owner = torch.arange(n_images).repeat_interleave(captions_per_image)
    captions = F.normalize(x[owner] @ w + 0.05 * torch.randn(len(owner), 16, generator=g), dim=1)
    start = np.arange(0, len(owner) + 1, captions_per_image)
    return Pairs(x, captions, start, np.arange(n_images)), owner


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_a_head_learns_a_known_linear_map(kind):
    train, _ = linear_world(512, seed=0)
    val, val_owner = linear_world(100, seed=1)
    scores = []

    def score(model):
        with torch.no_grad():
            value = embedding_retrieval_metrics(model(val.features), val.captions, val_owner)["rsum"]
        scores.append(value)
        return value

    run = train_head(kind, train, score, epochs=8, batch_size=64, lr=1e-2, weight_decay=0.0, hidden=64, seed=0)
    assert len(run.history) == 8 and run.history[-1]["train_loss"] < run.history[0]["train_loss"]
    assert run.best_epoch == int(np.argmax(scores)) and max(scores) == run.history[run.best_epoch]["val_rsum"]
    with torch.no_grad():
        final = embedding_retrieval_metrics(run.model(val.features), val.captions, val_owner)
    assert final["rsum"] == pytest.approx(max(scores))  # the kept model is the best epoch's, not the last one's
    assert final["t2i_R@1"] > 0.9 and final["i2t_R@1"] > 0.9  # chance is 0.01
    trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert trainable == (
        {"head.weight", "logit_scale"}
        if kind == "linear"
        else {"head.net.0.weight", "head.net.0.bias", "head.net.3.weight", "head.net.3.bias", "logit_scale"}
    )


def test_seeds_are_reproducible_and_differ():
    train, _ = linear_world(128, seed=0)
    runs = [train_head("mlp", train, lambda m: 0.0, epochs=1, batch_size=32, hidden=32, seed=s) for s in (0, 0, 1)]
    weights = [r.model.head.net[0].weight for r in runs]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_an_unknown_head_is_refused():
    train, _ = linear_world(8, seed=0)
    with pytest.raises(ClipLabError, match="unknown head 'conv'"):
        train_head("conv", train, lambda m: 0.0, epochs=1)
