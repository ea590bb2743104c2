"""A real `fit` + `test` through the CLI on generated data (the `trained_run` fixture of conftest.py): outputs, learning,
checkpoints, one-line errors."""

import csv
import json
from pathlib import Path

import torch

from clip_lab.__main__ import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_fit_writes_config_log_and_checkpoints(trained_run):
    assert (trained_run / "config.yaml").is_file()
    assert {p.name for p in (trained_run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    rows = list(csv.DictReader((trained_run / "metrics.csv").open()))
    epochs = {int(r["epoch"]) for r in rows if r.get("train/loss")}
    assert epochs == set(range(6))
    val = [float(r["val/rsum"]) for r in rows if r.get("val/rsum")]
    assert len(val) == 6


def test_training_measurably_learns(trained_run):
    rows = list(csv.DictReader((trained_run / "metrics.csv").open()))
    train_loss = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert train_loss[-1] < 0.8 * train_loss[0]
    result = json.loads((trained_run / "test_metrics.json").read_text())
    m = result["metrics"]
    assert m["n_images"] == 96 and m["n_captions"] == 480
    assert result["split"] == "val2014" and result["checkpoint"].endswith("best.ckpt")
    # chance R@1 is 1/96 in both directions; demand 3x chance from a 6-epoch run on 256 images
    assert m["t2i_R@1"] > 3 / 96 and m["i2t_R@1"] > 3 / 96


def test_checkpoint_holds_no_text_encoder_and_loads_safely(trained_run):
    ckpt = torch.load(trained_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    prefixes = {k.split(".")[0] for k in ckpt["state_dict"]}
    assert prefixes == {"image_encoder", "head", "logit_scale"}
    assert ckpt["hyper_parameters"]["backbone"] == "resnet18"


def test_refuses_to_overwrite_an_existing_run(trained_run, demo_root, capsys):
    args = ["fit", "-c", str(trained_run / "config.yaml")]
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_missing_data_is_one_clear_line(tmp_path, demo_root, run_args, capsys):
    args = ["fit", "-c", str(CONFIGS / "coco.yaml"), *run_args(demo_root, tmp_path)]
    args[args.index("--data.data_root") + 1] = str(tmp_path / "nowhere")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: COCO 2014 files missing") and "nowhere/train2014/" in err[0]
    assert not (tmp_path / "results").exists()
