"""Interrupted runs resume to the same result; NaN stops with a pointer; wrong checkpoints and bad options: one line."""

import csv
import json

import pytest
import torch
from cli_args import fit_args, job_args

from clip_lab.__main__ import main
from clip_lab.files import CONFIGS
from clip_lab.train.module import ClipLab


def three_epochs(demo_root, tmp_path, run):
    return fit_args(demo_root, tmp_path, run, trainer__max_epochs=3, data__batch_size=32, data__val_images=48)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights_and_metrics(demo_root, tmp_path, monkeypatch):
    assert main(three_epochs(demo_root, tmp_path, "full")) == 0
    train = ClipLab.training_step

    def killed_at_step_12(self, batch, batch_idx):  # epoch 1 (8 steps per epoch), half way through
        if self.global_step == 12:
            raise RuntimeError("killed")
        return train(self, batch, batch_idx)

    monkeypatch.setattr(ClipLab, "training_step", killed_at_step_12)
    with pytest.raises(RuntimeError, match="killed"):
        main(three_epochs(demo_root, tmp_path, "cut"))
    monkeypatch.undo()
    run, full = tmp_path / "results" / "cut", tmp_path / "results" / "full"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    # the documented command: the run's own config and its last checkpoint
    assert main(job_args("fit", run, "last.ckpt")) == 0

    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)  # CPU: near-bitwise
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    train_epochs = [int(r["epoch"]) for r in rows if r.get("train/loss")]
    assert train_epochs == [0, 1, 2]  # the cut epoch's partial rows are not kept twice, the first epoch's are kept
    full_rsum = [r["val/rsum"] for r in csv.DictReader((full / "metrics.csv").open()) if r.get("val/rsum")]
    assert [r["val/rsum"] for r in rows if r.get("val/rsum")] == pytest.approx(full_rsum, abs=1e-6)
    stats = json.loads((run / "run_stats.json").read_text())
    assert [e["epoch"] for e in stats["epochs"]] == [0, 1, 2] and stats["resumed_at_epoch"] == 1


def test_a_nan_loss_stops_the_run_naming_the_step_and_the_last_good_checkpoint(
    demo_root, tmp_path, monkeypatch, capsys
):
    loss = ClipLab.train_loss

    def nan_from_step_10(self, images, text):
        value, acc = loss(self, images, text)
        return (value * float("nan") if self.global_step >= 10 else value), acc

    monkeypatch.setattr(ClipLab, "train_loss", nan_from_step_10)
    assert main(three_epochs(demo_root, tmp_path, "nan")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "NaN or infinite at or before global step 16" in err  # found at the end of epoch 1 (steps 8-15)
    assert "last good checkpoint:" in err and "last.ckpt" in err


def test_a_checkpoint_of_another_architecture_is_one_clear_line(trained_run, capsys):
    assert main(job_args("test", trained_run, "best.ckpt", model__backbone="resnet34")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: the checkpoint was trained with another model (backbone: checkpoint 'resnet18'")
    from clip_lab.errors import ClipLabError

    with pytest.raises(ClipLabError, match=r"another model.*head.net.0.weight: \(256, 512\) in the checkpoint"):
        ClipLab.load_from_checkpoint(trained_run / "checkpoints" / "best.ckpt", weights=None, head_hidden=64)


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--model.nonexistent", "3"], "unrecognized arguments: --model.nonexistent 3"),
        (["--data.batch_size", "abc"], 'Parser key "data.batch_size": Expected a'),
        (["-c", "no_such.yaml"], "File does not exist"),
        (["--ckpt_path", "no_such.ckpt"], "checkpoint no_such.ckpt does not exist"),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(demo_root, tmp_path, run_args, capsys, extra, expected):
    args = ["fit", "-c", str(CONFIGS / "coco.yaml"), *run_args(demo_root, tmp_path, "bad"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0]
    assert not (tmp_path / "results").exists()
