"""Zero-shot classification: class embeddings from names and prompt templates, probabilities, ties, unknown words."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from clip_lab.errors import ClipLabError
from clip_lab.files import CONFIGS
from clip_lab.models.pretrained import FrozenText
from clip_lab.models.text import knows_no_word
from clip_lab.models.text_towers import TextTower

TEMPLATES = CONFIGS / "prompts.yaml"
# Classes whose cosines with an image are within TIE_TOL of each other tie. Identical class embeddings give bitwise
# equal float32 cosines in practice; summed in another order, the 512-1024 products of two unit vectors differ by
# ~1e-7 (float32 rounding, measured 4e-8 at 512; bf16 or fp16 embeddings change nothing, as equal embeddings round
# equally and the scores are float32). 1e-5 is 100x that, yet far below what bf16 embeddings resolve (~4e-3 of a
# cosine), so no difference the model could mean is called a tie. Near-duplicate embeddings (equal prompts encoded
# in batches of other shapes on a GPU) are not caught; the unknown-word warnings name the usual cause of equal ones.
TIE_TOL = 1e-5

log = logging.getLogger(__name__)


def load_templates(path: str | Path) -> list[str]:
    """The `templates:` list of a YAML file, each a string with one `{}` where the class name goes."""
    path = Path(path)
    try:
        templates = yaml.safe_load(path.read_text()).get("templates")
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise ClipLabError(
            f"cannot read prompt templates from {path} ({type(e).__name__}); pass a YAML file with a "
            f"`templates:` list, like {TEMPLATES}"
        ) from e
    return check_templates(templates, f"{path}: `templates:`")


def check_templates(templates: object, what: str = "templates") -> list[str]:
    """`templates` as a list if it is a non-empty list of strings with one `{}` each; else one ClipLabError line."""
    if not templates or not isinstance(templates, list | tuple):
        templates = None
    if not templates or not all(isinstance(t, str) and t.count("{}") == 1 for t in templates):
        raise ClipLabError(f"{what} must be a non-empty list of strings with one {{}} each, e.g. 'a photo of a {{}}.'")
    return list(templates)


def check_classes(classes: Sequence[str] | None) -> list[str]:
    """The class names, stripped; one ClipLabError line unless there are two or more, each non-empty and given once."""
    names = [c.strip() for c in classes or []]
    if len(names) < 2 or not all(names):
        raise ClipLabError(
            f"zero-shot needs at least two non-empty class names, got {names}; e.g. person animal landscape"
        )
    if len(set(names)) < len(names):
        raise ClipLabError(f"class names repeat in {' '.join(names)}: give each once")
    return names


def class_embeddings(
    encoder: FrozenText | TextTower, classes: Sequence[str], templates: Sequence[str], normalize: bool = True
) -> Tensor:
    """`[n_classes, dim]`: each class the normalized mean of its prompts' normalized embeddings (CLIP's ensembling).

    `normalize=False` keeps the plain mean, so that an image's dot product with it is the mean of its cosines with
    the prompts: for a model scored by a sigmoid with a bias (SigLIP) the mean logit over templates, on the scale the
    bias was learned at (a renormalized mean has larger cosines than any one prompt and would inflate them).
    """
    prompts = [t.replace("{}", c) for c in classes for t in templates]
    emb = encoder.encode(prompts).float().cpu().view(len(classes), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1) if normalize else emb


def class_scores(image_emb: Tensor, class_emb: Tensor) -> Tensor:
    """`[n_images, n_classes]` float32 cosines (both sides are L2-normalized); float32 keeps ties exact (TIE_TOL)."""
    return image_emb.float() @ class_emb.float().T


def class_probabilities(scores: Tensor, logit_scale: float, logit_bias: float | None = None) -> Tensor:
    """The model's own probabilities of each class: a softmax over classes of `logit_scale * cosine` (the temperature
    it learned), or for a model trained with a sigmoid loss and a bias (SigLIP), each class's own
    `sigmoid(logit_scale * cosine + logit_bias)` (they need not sum to 1)."""
    if logit_bias is not None:
        return torch.sigmoid(logit_scale * scores + logit_bias)
    return (logit_scale * scores).softmax(dim=-1)


def top_classes(scores: Tensor, tol: float = TIE_TOL) -> list[list[int]]:
    """Per row of `scores`, the columns within `tol` of its best: one class, or every class tied for the top."""
    best = scores.max(dim=1, keepdim=True).values
    return [row.nonzero().flatten().tolist() for row in scores >= best - tol]


def warn_unknown_words(encoder: FrozenText | TextTower, classes: Sequence[str], templates: Sequence[str]) -> dict:
    """Warn about class-name and template words the text encoder reads as its unknown token; return them by class.

    A class none of whose words is known embeds as its templates around unknown tokens, whatever its name says: it
    ties with every other such class of as many words, and its score says nothing about the class.
    """
    by_class = {c: words for c in classes if (words := encoder.unknown_words([c]))}
    blind = [c for c in by_class if knows_no_word(encoder, c)]
    in_templates = encoder.unknown_words([t.replace("{}", " ") for t in templates])
    if blind:
        log.warning(
            "zero-shot classes %s: none of their words is in the text encoder's vocabulary, so their prompts "
            "are the templates alone around unknown tokens and their scores say nothing about them",
            ", ".join(map(repr, blind)),
        )
    partly = {c: w for c, w in by_class.items() if c not in blind}
    if partly:
        log.warning(
            "zero-shot class words outside the text encoder's vocabulary (read as its unknown token): %s",
            "; ".join(f"{c!r}: {', '.join(w)}" for c, w in partly.items()),
        )
    if in_templates:
        log.warning(
            "prompt template words outside the text encoder's vocabulary (read as its unknown token): %s",
            ", ".join(in_templates),
        )
    return {"classes": by_class, "templates": in_templates}
