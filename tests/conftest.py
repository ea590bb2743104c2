"""Shared fixtures: one small generated COCO-format dataset (real JPEGs + captions JSON + a tiny full CLIP) and one
checkpoint trained on it through the CLI, shared by every test file that needs a trained model."""

import cli_args
import pytest
from cli_args import ckpt_of, fit_args, job_args

from clip_lab.__main__ import main
from clip_lab.data.synthetic import make_demo_dataset

# fixtures that run a real fit: every test that uses one, directly or through another fixture, is `slow`
FIT_FIXTURES = {"trained_run", "tensorboard_run", "mlflow_run", "flickr"}


def pytest_collection_modifyitems(items):
    for item in items:
        if FIT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
    """`run_args(demo_root, tmp_path, run="t", **options)`: CLI flags pointing a run at the demo data and at its own
    folders (cli_args.run_args)."""
    return cli_args.run_args


@pytest.fixture(scope="session")
def trained_run(demo_root, tmp_path_factory):
    """results/t/ of a 6-epoch ResNet18 demo fit (256 images) and its test: config, log, checkpoints, test metrics.

    Its caches (image and caption caches of both splits) are in the sibling cache/ folder, which the checkpoint's
    data settings name. Tests that write caches of their own pass another --cache_dir.
    """
    tmp = tmp_path_factory.mktemp("cli")
    args = fit_args(demo_root, tmp, "t", trainer__max_epochs=6, data__batch_size=32, data__val_images=64)
    assert main(args) == 0
    run = tmp / "results" / "t"
    assert main(job_args("test", run, "best.ckpt")) == 0
    return run


@pytest.fixture
def own_run(trained_run, tmp_path):
    """A run folder of this test's own holding (a link to) the trained best.ckpt: a job's default output (search,
    zeroshot) lands there, not in the shared run, which other tests copy and whose newest result the report shows."""
    run = tmp_path / "results" / "t"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").symlink_to(ckpt_of(trained_run))
    return run
