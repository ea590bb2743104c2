"""Zero-shot's pure parts: ties among the top classes, class and template checks, probabilities at the model's
temperature."""

import pytest
import torch

from clip_lab.errors import ClipLabError
from clip_lab.eval import zeroshot


def test_top_classes_are_the_best_class_or_every_class_tied_for_the_top():
    probs = torch.tensor(
        [
            [0.5, 0.3, 0.2],
            [0.4, 0.4, 0.2],  # an exact tie of two
            [1 / 3, 1 / 3, 1 / 3],  # all tied
            [0.2, 0.4, 0.4 + 1e-7],  # equal within float rounding: a tie
            [0.2, 0.4 - 2e-5, 0.4],  # 2e-5 apart: a real (if small) difference
            [0.2, 0.39, 0.41],
        ]
    )
    assert zeroshot.top_classes(probs) == [[0], [0, 1], [0, 1, 2], [1, 2], [2], [2]]


def test_probabilities_are_the_softmax_of_the_scaled_cosines():
    scores = torch.tensor([[0.1, 0.3]])
    probs = zeroshot.class_probabilities(scores, 10.0)
    expected = torch.tensor([1.0, torch.e**2]) / (1 + torch.e**2)  # exp(10 * 0.1), exp(10 * 0.3), divided by e
    assert torch.allclose(probs[0], expected)


@pytest.mark.parametrize(
    "classes, message",
    [([], "at least two"), (["a"], "at least two"), (["a", " "], "at least two"), (["a", "a "], "repeat")],
)
def test_class_lists_are_checked(classes, message):
    with pytest.raises(ClipLabError, match=message):
        zeroshot.check_classes(classes)
    assert zeroshot.check_classes([" a", "b "]) == ["a", "b"]


@pytest.mark.parametrize("templates", [[], ["a photo"], ["{} and {}"], "a {}", [3]])
def test_templates_need_one_slot_each(templates):
    with pytest.raises(ClipLabError, match="one {} each"):
        zeroshot.check_templates(templates)
    assert zeroshot.check_templates(("a {}.",)) == ["a {}."]
