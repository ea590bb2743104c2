"""retrieval_metrics on hand-built matrices with known answers, and against a naive reference on random ones."""

import math

import numpy as np
import pytest
import torch

from clip_lab.eval.metrics import embedding_retrieval_metrics, retrieval_metrics


def reference(sim: np.ndarray, caption_image: np.ndarray, ks=(1, 5, 10)) -> dict:
    """Sort each row / column, ties broken against the ground truth, read off the first correct position."""
    n_img, n_cap = sim.shape
    out = {}
    i2t = []
    for i in range(n_img):
        pos = caption_image == i
        if not pos.any():
            continue
        # sort by score descending; among equal scores the negatives come first (pessimistic ties)
        order = sorted(range(n_cap), key=lambda j: (-sim[i, j], bool(pos[j])))
        i2t.append(next(r for r, j in enumerate(order) if pos[j]))
    t2i = []
    for j in range(n_cap):
        g = caption_image[j]
        order = sorted(range(n_img), key=lambda i: (-sim[i, j], i == g))
        t2i.append(order.index(g))
    for name, ranks in (("i2t", np.array(i2t)), ("t2i", np.array(t2i))):
        for k in ks:
            out[f"{name}_R@{k}"] = float(np.mean(ranks < k))
        out[f"{name}_median_rank"] = float(np.median(ranks + 1))
        out[f"{name}_MRR"] = float(np.mean(1 / (ranks + 1)))
        out[f"{name}_n"] = len(ranks)
    return out


def test_hand_built_matrix_several_captions_per_image():
    # 3 images; image 0 has captions 0,1; image 1 has 2,3,4; image 2 has 5
    caption_image = torch.tensor([0, 0, 1, 1, 1, 2])
    sim = torch.tensor(
        [
            # c0   c1   c2   c3   c4   c5
            [0.1, 0.9, 0.8, 0.0, 0.0, 0.0],  # image 0: its caption c1 is best -> i2t rank 0
            [0.9, 0.0, 0.1, 0.2, 0.8, 0.0],  # image 1: best own caption c4 (0.8) beaten by c0 (0.9) -> rank 1
            [0.7, 0.6, 0.5, 0.4, 0.3, 0.0],  # image 2: its only caption c5 is ranked last among 6 -> rank 5
        ]
    )
    m = retrieval_metrics(sim, caption_image, ks=(1, 2, 5))
    assert m["i2t_R@1"] == pytest.approx(1 / 3)
    assert m["i2t_R@2"] == pytest.approx(2 / 3)
    assert m["i2t_R@5"] == pytest.approx(2 / 3)  # rank 5 (0-based) is the 6th place: outside the top 5
    assert m["i2t_median_rank"] == 2.0  # 1-based ranks 1, 2, 6
    assert m["i2t_MRR"] == pytest.approx((1 + 1 / 2 + 1 / 6) / 3)
    # t2i ranks (0-based): c0 -> image 0 scores 0.1 < 0.9, 0.7 -> 2; c1 -> 0; c2 -> 0.1 < 0.8, 0.5 -> 2;
    # c3 -> 0.2 < 0.4 -> 1; c4 -> 0.8 best -> 0; c5 -> all 0.0, ties count against -> 2
    assert m["t2i_R@1"] == pytest.approx(2 / 6)
    assert m["t2i_R@2"] == pytest.approx(3 / 6)
    assert m["t2i_R@5"] == 1.0
    assert m["t2i_median_rank"] == pytest.approx(2.5)  # 1-based ranks sorted 1,1,2,3,3,3 -> (2 + 3) / 2
    assert m["rsum"] == pytest.approx(1 / 3 + 2 / 3 + 2 / 3 + 2 / 6 + 3 / 6 + 1.0)


def test_perfect_and_constant_similarity():
    caption_image = torch.arange(4).repeat_interleave(5)
    perfect = (caption_image[None, :] == torch.arange(4)[:, None]).float()
    m = retrieval_metrics(perfect, caption_image)
    assert all(m[f"{d}_R@{k}"] == 1.0 for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert m["i2t_median_rank"] == m["t2i_median_rank"] == 1.0
    # a constant model must not look good: ties count against it
    m = retrieval_metrics(torch.zeros(4, 20), caption_image)
    assert m["i2t_R@1"] == 0.0 and m["t2i_R@1"] == 0.0
    assert m["i2t_median_rank"] == 16.0  # behind all 15 negatives
    assert m["t2i_median_rank"] == 4.0


def test_other_captions_of_the_same_image_are_not_negatives():
    # image 0's five captions all beat its... own best caption; none of them may count against it
    caption_image = torch.tensor([0, 0, 0, 1])
    sim = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.0, 0.0, 0.0, 0.5]])
    m = retrieval_metrics(sim, caption_image, ks=(1,))
    assert m["i2t_R@1"] == 1.0


def test_image_without_captions_is_excluded_from_i2t_but_stays_a_distractor():
    caption_image = torch.tensor([0, 0])  # image 1 has no caption
    sim = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    m = retrieval_metrics(sim, caption_image, ks=(1,))
    assert m["i2t_n"] == 1 and m["i2t_R@1"] == 1.0
    assert m["t2i_R@1"] == 0.5  # caption 0 loses to image 1


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_reference_on_random_matrices(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 8, size=int(rng.integers(5, 30)))  # 1 to 7 captions per image
    caption_image = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(caption_image)  # captions need not be grouped by image
    sim = rng.normal(size=(len(counts), len(caption_image))).round(1)  # rounding makes ties common
    expected = reference(sim, caption_image)
    for chunk in (1, 3, 1024):
        got = retrieval_metrics(torch.tensor(sim), torch.tensor(caption_image), chunk_size=chunk)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value), key


def test_embeddings_path_equals_matrix_path():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(37, 16, generator=g), dim=1)
    cap = torch.nn.functional.normalize(torch.randn(120, 16, generator=g), dim=1)
    caption_image = torch.randint(0, 37, (120,), generator=g)
    caption_image[:37] = torch.arange(37)
    a = embedding_retrieval_metrics(img, cap, caption_image, chunk_size=7)
    b = retrieval_metrics(img @ cap.T, caption_image)
    assert a == pytest.approx(b)


def test_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="shape"):
        retrieval_metrics(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(torch.zeros(2, 2), torch.tensor([0, 2]))
    assert not math.isnan(retrieval_metrics(torch.eye(2), torch.tensor([0, 1]))["i2t_MRR"])
