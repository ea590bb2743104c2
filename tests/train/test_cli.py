"""A real `fit` + `test` through the CLI on generated data (conftest.py's `trained_run`): outputs, learning, errors."""

import csv
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch
from cli_args import fit_args

from clip_lab import options
from clip_lab.__main__ import main
from clip_lab.data.synthetic import make_demo_dataset
from clip_lab.files import CONFIGS
from clip_lab.train import cli
from clip_lab.train.console import LIGHTNING_INFO, ModelSize, fit_summary, quiet_lightning


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
    nowhere = tmp_path / "nowhere"
    args = ["fit", "-c", str(CONFIGS / "coco.yaml"), *run_args(demo_root, tmp_path, data__data_root=nowhere)]
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


def test_a_split_smaller_than_one_batch_stops_at_once_with_one_line(demo_root, tmp_path, capsys):
    assert main(fit_args(demo_root, tmp_path, data__batch_size=512)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("INFO")]
    assert len(err) == 1 and "train2014 has 256 images with captions, fewer than one batch of 512" in err[0]
    assert "--data.batch_size (at most 256)" in err[0]
    assert not (tmp_path / "cache").exists()  # before any cache is built
    assert not (tmp_path / "results" / "t" / "config.yaml").exists()


def test_unreadable_images_that_leave_less_than_a_batch_stop_before_training(tmp_path, capsys):
    root = make_demo_dataset(tmp_path / "small", n_train=10, n_val=8, seed=3)
    victim = sorted((root / "train2014").iterdir())[4]
    victim.write_bytes(b"not a jpeg")
    assert main(fit_args(root, tmp_path, data__batch_size=10, data__max_bad_images=0.2)) == 2
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
    assert err[0].endswith(f"fitted runs in {results}/: t")  # the runs that can be tested
    assert not (results / "untrained").exists()


def test_predict_is_no_job_and_says_where_embeddings_come_from(capsys):
    assert main(["predict", "-c", str(CONFIGS / "coco.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown job 'predict'" in err[0] and "python -m clip_lab embed" in err[0]


# -- disk: the best checkpoint holds the weights alone, last.ckpt everything a resumed fit needs ---------------------
def test_best_checkpoint_holds_the_weights_alone_and_last_the_whole_state(trained_run):
    best = torch.load(trained_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for key in ("optimizer_states", "lr_schedulers", "callbacks"):
        assert key not in best and key in last, key
    assert best["state_dict"].keys() == last["state_dict"].keys()
    assert best["hyper_parameters"] == last["hyper_parameters"] and "datamodule_hyper_parameters" in best
    # the callback state in last.ckpt is ModelCheckpoint's own key: runs checkpointed before keep resuming their best
    (key,) = [k for k in last["callbacks"] if "ModelCheckpoint" in k]
    assert key.startswith("ModelCheckpoint{") and last["callbacks"][key]["best_model_path"].endswith("best.ckpt")
    sizes = {p.name: p.stat().st_size for p in (trained_run / "checkpoints").iterdir()}
    assert sizes["best.ckpt"] < 0.5 * sizes["last.ckpt"]  # AdamW's two moments: a whole checkpoint is ~3x the weights


def test_a_fit_cannot_resume_from_the_weights_only_best_checkpoint(trained_run, capsys):
    best = trained_run / "checkpoints" / "best.ckpt"
    assert main(["fit", "-c", str(trained_run / "config.yaml"), "--ckpt_path", str(best)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert err == [
        f"error: {best} holds the model's weights alone (best.ckpt keeps no optimizer state), so a fit cannot "
        f"resume from it: pass --ckpt_path {trained_run / 'checkpoints' / 'last.ckpt'}"
    ]


# -- the console -------------------------------------------------------------------------------------------------------
def test_test_before_fit_says_the_run_has_not_been_fitted(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for run in ("baseline", "ablations/bn_head/seed0"):
        (tmp_path / "results" / run).mkdir(parents=True)
        (tmp_path / "results" / run / "config.yaml").write_text("run: x\n")
    assert main(["test", "-c", "results/demo/config.yaml"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: run demo has not been fitted: there is no results/demo/config.yaml; fitted runs in results/: "
        "ablations/bn_head/seed0, baseline. Fit it first: python -m clip_lab fit -c configs/coco.yaml --run demo"
    ]
    other = tmp_path / "elsewhere"
    assert main(["test", "-c", f"{other}/mine/config.yaml", "--results_dir", str(other)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: run mine has not been fitted: there is no {other}/mine/config.yaml; no run in {other}/ has been "
        f"fitted yet. Fit it first: python -m clip_lab fit -c configs/coco.yaml --run mine --results_dir {other}"
    ]


def test_fit_ends_with_the_best_checkpoint_its_rsum_and_the_test_command(trained_run):
    rows = [r for r in csv.DictReader((trained_run / "metrics.csv").open()) if r.get("val/rsum")]
    best_row = max(rows, key=lambda r: float(r["val/rsum"]))
    best = trained_run / "checkpoints" / "best.ckpt"
    callback = SimpleNamespace(
        best_model_path=str(best),
        best_model_score=torch.tensor(float(best_row["val/rsum"])),
        monitor="val/rsum",
        last_model_path=str(trained_run / "checkpoints" / "last.ckpt"),
    )
    results = trained_run.parent
    assert fit_summary(callback, trained_run, str(results)) == (
        f"fit done: best checkpoint {best} (epoch {int(best_row['epoch'])}, val/rsum {float(best_row['val/rsum']):.3f})"
        f"\nnext, test it: python -m clip_lab test -c {trained_run / 'config.yaml'} --results_dir {results}"
    )
    assert fit_summary(callback, Path("results/t"), "results").endswith(
        "next, test it: python -m clip_lab test -c results/t/config.yaml"
    )
    callback.best_model_path = ""
    assert fit_summary(callback, trained_run, "results").startswith("fit done, without a best checkpoint (val/rsum")


def test_test_and_validate_print_a_compact_table_and_test_where_it_wrote(
    trained_run, tmp_path, monkeypatch, capsys, caplog
):
    results = tmp_path / "results"
    shutil.copytree(trained_run / "checkpoints", results / "t" / "checkpoints")
    best = results / "t" / "checkpoints" / "best.ckpt"
    monkeypatch.setattr(options, "_warned", set())
    common = ["-c", str(trained_run / "config.yaml"), "--results_dir", str(results), "--run", "t"]
    with caplog.at_level(logging.WARNING, logger="clip_lab"):
        assert main(["test", *common, "--ckpt", str(best)]) == 0  # the old spelling, still read
    assert "--ckpt is deprecated: use --ckpt_path (the old spelling goes in the next release)" in caplog.messages
    out = capsys.readouterr().out
    result = json.loads((results / "t" / "test_metrics.json").read_text())
    m = result["metrics"]
    row = lambda d: f"{d:<6}" + "".join(f"{m[f'{d}_R@{k}']:>8.3f}" for k in (1, 5, 10))
    assert out.splitlines()[-5:] == [
        f"test of {best} on val2014 (protocol {result['protocol']['name']}: 96 images, 480 captions); results in "
        f"{results / 't' / 'test_metrics.json'}",
        "           R@1     R@5    R@10",
        row("i2t"),
        row("t2i"),
        f"rsum  {m['rsum']:>8.3f}",
    ]
    assert "test/first_caption" not in out and "DataLoader 0" not in out  # no table of every logged value

    assert main(["validate", *common]) == 0  # its best.ckpt, found by itself
    out = capsys.readouterr().out.splitlines()
    assert out[-5] == f"validation of {best}: 64 images, 320 captions" and out[-4] == "           R@1     R@5    R@10"
    assert out[-3].startswith("i2t   ") and out[-1].startswith("rsum  ")


def test_the_model_summary_leaves_out_flops(capsys):
    data = [
        (" ", ["0", "1"]),
        ("Name", ["image_encoder", "head"]),
        ("Type", ["ImageEncoder", "ProjectionHead"]),
        ("Params", ["11.2 M", "164 K"]),
        ("Mode", ["train", "train"]),
        ("FLOPs", ["0", "0"]),
    ]
    ModelSize.summarize(data, 11_364_354, 11_364_354, 45.457, {"train": 76, "eval": 0}, total_flops=0)
    assert capsys.readouterr().out.splitlines() == [
        "   Name           Type            Params  Mode",
        "0  image_encoder  ImageEncoder    11.2 M  train",
        "1  head           ProjectionHead  164 K   train",
        "11.4 M trainable and 0 frozen parameters, 45.5 MB",
    ]


def test_lightnings_noise_is_filtered_by_its_exact_words_and_its_other_lines_kept(caplog):
    quiet_lightning()
    quiet_lightning()  # once, however often main() runs
    logger = logging.getLogger(LIGHTNING_INFO)
    assert sum(type(f).__name__ == "QuietLightning" for f in logger.filters) == 1
    with caplog.at_level(logging.INFO, logger=LIGHTNING_INFO):
        logger.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](...)")
        logger.info("TPU available: False, using: 0 TPU cores")
        logger.info("Loading `train_dataloader` to estimate number of stepping batches.")
        logger.info("GPU available: True (cuda), used: True")
        logger.info("TPU available: True, using: 0 TPU cores")
        logger.warning("The number of training batches (2) is smaller than the logging interval")
    assert caplog.messages == [
        "GPU available: True (cuda), used: True",
        "TPU available: True, using: 0 TPU cores",
        "The number of training batches (2) is smaller than the logging interval",
    ]


def test_float32_matmul_precision_is_set_on_a_gpu_only(tmp_path, monkeypatch):
    set_to = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", set_to.append)
    missing = ["test", "-c", str(tmp_path / "results" / "x" / "config.yaml")]
    for cuda in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        try:
            cli.main(missing)
        except Exception:  # the run has not been fitted: stops right after
            pass
    assert set_to == ["high"]
