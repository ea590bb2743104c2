"""The one scoring path on hand-built embeddings: folds only under the test protocol, the first-caption diagonal."""

from types import SimpleNamespace

import pytest
import torch

from clip_lab.eval.scoring import score, score_first_captions, score_split


class Data:
    """A stand-in for RetrievalData: four images, one caption each, caption j of image j; a two-fold protocol."""

    protocol = SimpleNamespace(folds=2)

    def __init__(self, caption_emb):
        self.caption_emb = caption_emb

    def retrieval_targets(self, stage, embed=None):
        return self.caption_emb, torch.arange(4)


def test_test_is_scored_over_the_protocols_folds_and_validation_over_one_gallery():
    images = torch.eye(4)
    # caption 1 is image 2's direction: wrong among all four images, right within fold {0, 1} (image 2 is not there)
    captions = torch.tensor([[1.0, 0, 0, 0], [0, 0.6, 0.8, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    data = Data(captions)
    val, test = score_split(data, "val", images), score_split(data, "test", images)
    assert val["t2i_R@1"] == pytest.approx(3 / 4) and test["t2i_R@1"] == 1.0
    assert val["n_images"] == test["n_images"] == 4 and val["n_captions"] == 4
    assert score_split(data, "val", images, (captions, torch.arange(4))) == val  # targets given: the same numbers
    assert score(images, captions, torch.arange(4), folds=2) == test


def test_first_caption_protocol_reads_the_diagonal_and_skips_captionless_images():
    image = torch.eye(4)
    first = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]])  # image 2 has no caption
    # images 0, 1, 3 vs captions 0, 1, 3: caption 1 matches image 2 (not evaluated) and caption 3 matches image 1
    m = score_first_captions(image, first)
    assert m["n_images"] == m["n_captions"] == 3
    assert m["i2t_R@1"] == pytest.approx(1 / 3)  # only image 0 ranks its own first caption first
    # image 1's caption scores 0 against everything: a three-way tie, which counts against the model
    assert m["t2i_R@1"] == pytest.approx(1 / 3)
