"""A real `fit` + `test` through the CLI on generated data (conftest.py's `trained_run`): outputs, learning, errors."""

import csv
import json
import shutil
from pathlib import Path

import torch

from clip_lab.__main__ import main
from clip_lab.data.synthetic import make_demo_dataset
from clip_lab.files import CONFIGS


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


def test_fit_records_time_and_hardware_and_test_keeps_examples_for_the_report(trained_run):
    stats = json.loads((trained_run / "run_stats.json").read_text())
    accelerator = "cuda" if torch.cuda.is_available() else "cpu"  # the trainer's "auto" choice
    assert stats["finished"] and stats["hardware"]["accelerator"] == accelerator and stats["hardware"]["devices"] == 1
    assert [e["epoch"] for e in stats["epochs"]] == list(range(6))
    for e in stats["epochs"]:
        assert e["train_images"] == 256 // 32 * 32 and e["train_images_per_s"] > 0
        assert 0 < e["val_seconds"] < e["seconds"]
    assert stats["fit_seconds"] >= sum(e["seconds"] for e in stats["epochs"])
    examples = json.loads((trained_run / "test_examples.json").read_text())
    assert len(examples["retrieval"]) == 8
    for ex in examples["retrieval"]:
        assert len(ex["captions"]) == 5 and len(ex["retrieved"]) == 5 and Path(ex["file"]).is_file()
        scores = [r["score"] for r in ex["retrieved"]]
        assert scores == sorted(scores, reverse=True)
        assert all(r["correct"] == (r["image_id"] == ex["image_id"]) for r in ex["retrieved"])
        assert all(r["caption"] in ex["captions"] for r in ex["retrieved"] if r["correct"])
    sim = examples["similarity"]
    assert len(sim["matrix"]) == len(sim["images"]) == len(sim["captions"]) == 8
    assert all(len(row) == 8 for row in sim["matrix"])
    emb = torch.load(trained_run / "test_embeddings.pt", weights_only=True)
    assert emb["image"].shape == emb["caption"].shape == (96, 128) and len(emb["image_ids"]) == 96
    # the heatmap's diagonal is each shown image against its own first caption, as in the saved embeddings
    row = {int(i): k for k, i in enumerate(emb["image_ids"])}
    shown = [row[im["image_id"]] for im in sim["images"]]
    diagonal = (emb["image"][shown].float() * emb["caption"][shown].float()).sum(dim=1)
    assert torch.allclose(torch.tensor(sim["matrix"]).diagonal(), diagonal, atol=3e-3)


def test_a_split_smaller_than_one_batch_stops_at_once_with_one_line(demo_root, tmp_path, run_args, capsys):
    args = [
        "fit",
        "-c",
        str(CONFIGS / "coco.yaml"),
        "-c",
        str(CONFIGS / "demo.yaml"),
        *run_args(demo_root, tmp_path),
        "--data.batch_size",
        "512",
    ]
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("INFO")]
    assert len(err) == 1 and "train2014 has 256 images with captions, fewer than one batch of 512" in err[0]
    assert "--data.batch_size (at most 256)" in err[0]
    assert not (tmp_path / "cache").exists()  # before any cache is built
    assert not (tmp_path / "results" / "t" / "config.yaml").exists()


def test_unreadable_images_that_leave_less_than_a_batch_stop_before_training(tmp_path, run_args, capsys):
    root = make_demo_dataset(tmp_path / "small", n_train=10, n_val=8, seed=3)
    victim = sorted((root / "train2014").iterdir())[4]
    victim.write_bytes(b"not a jpeg")
    args = [
        "fit",
        "-c",
        str(CONFIGS / "coco.yaml"),
        "-c",
        str(CONFIGS / "demo.yaml"),
        *run_args(root, tmp_path),
        "--data.batch_size",
        "10",
        "--data.max_bad_images",
        "0.2",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ")
    assert "train2014 has 9 images with captions (1 unreadable skipped), fewer than one batch of 10" in err
    run = tmp_path / "results" / "t"
    assert not (run / "config.yaml").exists() and not (run / "checkpoints").exists()


def test_test_without_a_checkpoint_uses_the_runs_best_or_stops(trained_run, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(trained_run / "checkpoints", results / "t" / "checkpoints")
    config = ["test", "-c", str(trained_run / "config.yaml"), "--results_dir", str(results)]
    assert main([*config, "--run", "t"]) == 0
    result = json.loads((results / "t" / "test_metrics.json").read_text())
    assert result["checkpoint"] == str(results / "t" / "checkpoints" / "best.ckpt")
    assert result["metrics"] == json.loads((trained_run / "test_metrics.json").read_text())["metrics"]

    assert main([*config, "--run", "untrained"]) == 2  # no checkpoint: no test of random weights, nothing written
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "test needs trained weights" in err[0] and "--ckpt_path" in err[0]
    assert not (results / "untrained").exists()


def test_predict_is_no_job_and_says_where_embeddings_come_from(capsys):
    assert main(["predict", "-c", str(CONFIGS / "coco.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown job 'predict'" in err[0] and "python -m clip_lab embed" in err[0]
