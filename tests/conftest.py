"""Shared fixtures: one small generated COCO-format dataset (real JPEGs + captions JSON + tiny CLIP text tower)."""

import pytest

from clip_lab.data.synthetic import make_demo_dataset


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "coco", n_train=256, n_val=96, seed=0)


@pytest.fixture(scope="session")
def text_model(demo_root):
    return str(demo_root / "clip_text_tiny")
