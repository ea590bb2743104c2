"""Shared fixtures: one small generated COCO-format dataset (real JPEGs + captions JSON + a tiny full CLIP) and one
checkpoint trained on it through the CLI, shared by every test file that needs a trained model."""

import pytest

from clip_lab.__main__ import main
from clip_lab.data.synthetic import make_demo_dataset
from clip_lab.files import CONFIGS

# fixtures that run a real fit: every test that uses one, directly or through another fixture, is `slow`
FIT_FIXTURES = {"trained_run", "tensorboard_run", "mlflow_run", "flickr"}


def pytest_collection_modifyitems(items):
    for item in items:
        if FIT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def _run_args(demo_root, tmp_path, run="t"):
    return [
        "--run",
        run,
        "--results_dir",
        str(tmp_path / "results"),
        "--data.data_root",
        str(demo_root),
        "--data.text_model",
        str(demo_root / "clip_tiny"),
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--data.num_workers",
        "0",
    ]


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "coco", n_train=256, n_val=96, seed=0)


@pytest.fixture(scope="session")
def text_model(demo_root):
    return str(demo_root / "clip_tiny")


@pytest.fixture(scope="session")
def clip_model(demo_root):
    """The demo's tiny full CLIP (the folder `text_model` names): for the image tower."""
    return str(demo_root / "clip_tiny")


@pytest.fixture(scope="session")
def run_args():
    """`run_args(demo_root, tmp_path, run="t")`: CLI flags pointing a run at the demo data and at its own folders."""
    return _run_args


@pytest.fixture(scope="session")
def trained_run(demo_root, tmp_path_factory):
    """results/t/ of a 6-epoch ResNet18 demo fit (256 images) and its test: config, log, checkpoints, test metrics.

    Its caches (image and caption caches of both splits) are in the sibling cache/ folder, which the checkpoint's
    data settings name. Tests that write caches of their own pass another --cache_dir.
    """
    tmp = tmp_path_factory.mktemp("cli")
    args = [
        "fit",
        "-c",
        str(CONFIGS / "coco.yaml"),
        "-c",
        str(CONFIGS / "demo.yaml"),
        *_run_args(demo_root, tmp),
        "--trainer.max_epochs",
        "6",
        "--data.batch_size",
        "32",
        "--data.val_images",
        "64",
    ]
    assert main(args) == 0
    run = tmp / "results" / "t"
    assert main(["test", "-c", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "best.ckpt")]) == 0
    return run
