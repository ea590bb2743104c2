"""TensorBoard and MLflow beside the CSV log: real tiny fits and tests through the CLI, read back with each tool's own
reader; a resumed fit; one-line errors for unknown trackers and missing packages."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_args import fit_args, job_args

from clip_lab.__main__ import main


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tracking_cache")  # the caches are built once for every fit of this file


def tracked_fit(demo_root, tmp_path, run, cache_dir, *trackers, epochs=2):
    """fit arguments of a short run (3 batches an epoch) with configs/tracking/<tracker>.yaml of each of `trackers`."""
    return fit_args(
        demo_root,
        tmp_path,
        run,
        *[f"tracking/{name}.yaml" for name in trackers],
        data__cache_dir=cache_dir,
        trainer__max_epochs=epochs,
        data__batch_size=32,
        trainer__limit_train_batches=3,
        data__val_images=48,
        model__head_hidden=64,
    )


def fit_and_test(demo_root, tmp_path, run, cache_dir, *trackers):
    assert main(tracked_fit(demo_root, tmp_path, run, cache_dir, *trackers)) == 0
    run_dir = tmp_path / "results" / run
    assert main(job_args("test", run_dir, "best.ckpt")) == 0
    return run_dir


def csv_column(run_dir, key):
    return [float(r[key]) for r in csv.DictReader((run_dir / "metrics.csv").open()) if r.get(key)]


def best_of(run_dir):
    """(epoch, val/rsum) of the best checkpoint, from the CSV log and the checkpoint itself."""
    rsum = csv_column(run_dir, "val/rsum")
    epoch = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["epoch"]
    assert rsum[epoch] == max(rsum)
    return epoch, rsum[epoch]


def assert_run_folder_as_without_trackers(run_dir, epochs=2):
    # the CSV logger stays first: config, CSV, checkpoints and run_stats.json in the run folder itself
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    assert len(csv_column(run_dir, "val/rsum")) == epochs and len(csv_column(run_dir, "train/loss")) == epochs
    assert json.loads((run_dir / "run_stats.json").read_text())["finished"]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "test_metrics.json").is_file()
    assert not list(run_dir.glob("version_*")) and not (run_dir / "lightning_logs").exists()


def tensorboard_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


@pytest.fixture(scope="module")
def tensorboard_run(demo_root, tmp_path_factory, cache_dir):
    return fit_and_test(demo_root, tmp_path_factory.mktemp("tb"), "tb", cache_dir, "tensorboard")


@pytest.fixture(scope="module")
def mlflow_run(demo_root, tmp_path_factory, cache_dir):
    return fit_and_test(demo_root, tmp_path_factory.mktemp("mlflow"), "ml", cache_dir, "mlflow")


def test_tensorboard_logs_epochs_hyperparameters_best_checkpoint_and_test(tensorboard_run):
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from tensorboard.util import tensor_util

    run = tensorboard_run
    assert_run_folder_as_without_trackers(run)
    events = tensorboard_events(run / "tensorboard")
    # one point per epoch at step = epoch, the values of the CSV log
    val = events.Scalars("val/rsum")
    assert [e.step for e in val] == [0, 1] and [e.value for e in val] == pytest.approx(csv_column(run, "val/rsum"))
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1]
    assert "epoch" not in events.Tags()["scalars"] and "hp_metric" not in events.Tags()["scalars"]

    hparams = {
        tag: HParamsPluginData.FromString(content) for tag, content in events.PluginTagToContent("hparams").items()
    }
    started = hparams["_hparams_/session_start_info"].session_start_info.hparams
    assert started["model.head_hidden"].number_value == 64 and started["data.batch_size"].number_value == 32
    assert started["run"].string_value == "tb" and started["seed_everything"].number_value == 0
    assert started["model.weights"].string_value == "None" and "model._instantiator" not in started
    assert started["trainer.max_epochs"].number_value == 2
    metrics = [m.name.tag for m in hparams["_hparams_/experiment"].experiment.metric_infos]
    assert metrics == ["val/rsum", "best/val_rsum"]

    epoch, rsum = best_of(run)
    best = events.Scalars("best/val_rsum")
    assert [(e.step, e.value) for e in best] == [(epoch, pytest.approx(rsum))]
    [text] = events.Tensors("best/checkpoint/text_summary")
    record = tensor_util.make_ndarray(text.tensor_proto).item().decode()
    assert record.startswith(f"{(run / 'checkpoints' / 'best.ckpt').resolve()} (epoch {epoch}, val/rsum ")

    # test adds its metrics at the tested checkpoint's epoch
    tested = json.loads((run / "test_metrics.json").read_text())["metrics"]
    assert [(e.step, e.value) for e in events.Scalars("test/rsum")] == [(epoch, pytest.approx(tested["rsum"]))]
    assert events.Scalars("test/t2i_R@1")[0].value == pytest.approx(tested["t2i_R@1"])
    assert not (run / "mlflow_run.json").exists() and not (run.parent / "mlruns").exists()


def mlflow_client(results_dir, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # (the fit set it for itself; set here for reading alone)
    uri = (results_dir / "mlruns").resolve().as_uri()
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("clip_lab").experiment_id])
    return client, run


def test_mlflow_logs_params_epochs_best_checkpoint_and_test(mlflow_run, monkeypatch, tmp_path):
    run_dir = mlflow_run
    assert_run_folder_as_without_trackers(run_dir)
    client, run = mlflow_client(run_dir.parent, monkeypatch)
    assert run.info.run_name == "ml" and run.info.status == "FINISHED"
    pointer = json.loads((run_dir / "mlflow_run.json").read_text())
    assert pointer["run_id"] == run.info.run_id
    assert run.data.tags["clip_lab.run_dir"] == str(run_dir.resolve())

    params = run.data.params
    assert params["model.head_hidden"] == "64" and params["data.batch_size"] == "32" and params["run"] == "ml"
    assert params["seed_everything"] == "0" and params["model.weights"] == "None"
    assert not any(k.split(".")[-1].startswith("_") for k in params)

    history = client.get_metric_history(run.info.run_id, "val/rsum")
    assert [m.step for m in history] == [0, 1]
    assert [m.value for m in history] == pytest.approx(csv_column(run_dir, "val/rsum"))
    r1 = client.get_metric_history(run.info.run_id, "val/t2i_R1")  # R@1: MLflow allows no @
    assert [m.value for m in r1] == pytest.approx(csv_column(run_dir, "val/t2i_R@1"))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [0, 1]
    assert "epoch" not in run.data.metrics

    epoch, rsum = best_of(run_dir)
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "best/val_rsum")] == [
        (epoch, pytest.approx(rsum))
    ]
    assert run.data.tags["best_epoch"] == str(epoch)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.ckpt"]
    local = Path(client.download_artifacts(run.info.run_id, "checkpoints/best.ckpt", str(tmp_path)))
    best = run_dir / "checkpoints" / "best.ckpt"
    assert hashlib.sha256(local.read_bytes()).digest() == hashlib.sha256(best.read_bytes()).digest()

    # test: the same MLflow run, at the tested checkpoint's epoch
    tested = json.loads((run_dir / "test_metrics.json").read_text())["metrics"]
    [point] = client.get_metric_history(run.info.run_id, "test/rsum")
    assert (point.step, point.value) == (epoch, pytest.approx(tested["rsum"]))
    assert run.data.tags["test_checkpoint"] == str(best.resolve())
    assert not (run_dir / "tensorboard").exists()


def test_testing_a_checkpoint_of_a_fit_without_mlflow_starts_an_mlflow_run(tensorboard_run, monkeypatch, caplog):
    run_dir = tensorboard_run.parent / "tb_copy"  # (a copy: the fixture's run stays as its own test reads it)
    shutil.copytree(tensorboard_run, run_dir)
    assert main(job_args("test", run_dir, "best.ckpt", run="tb_copy", tracking__mlflow="true")) == 0
    assert "no MLflow run of" in caplog.text and "starting a new one" in caplog.text
    client, run = mlflow_client(run_dir.parent, monkeypatch)
    assert (
        run.info.run_name == "tb_copy"
        and json.loads((run_dir / "mlflow_run.json").read_text())["run_id"] == run.info.run_id
    )
    tested = json.loads((run_dir / "test_metrics.json").read_text())["metrics"]
    assert run.data.metrics["test/rsum"] == pytest.approx(tested["rsum"]) and "val/rsum" not in run.data.metrics


@pytest.mark.slow
def test_a_resumed_fit_continues_both_trackers(demo_root, tmp_path, cache_dir, monkeypatch):
    # both overlays stacked: their options add up
    assert main(tracked_fit(demo_root, tmp_path, "both", cache_dir, "tensorboard", "mlflow")) == 0
    run_dir = tmp_path / "results" / "both"
    pointer = json.loads((run_dir / "mlflow_run.json").read_text())
    # an interrupted fit may have logged an epoch that its last checkpoint does not hold: TensorBoard must drop it
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(run_dir / "tensorboard") as writer:
        writer.add_scalar("val/rsum", -1.0, 2)
    assert main(job_args("fit", run_dir, "last.ckpt", trainer__max_epochs=3)) == 0

    assert len(csv_column(run_dir, "val/rsum")) == 3
    val = tensorboard_events(run_dir / "tensorboard").Scalars("val/rsum")
    assert [e.step for e in val] == [0, 1, 2] and [e.value for e in val] == pytest.approx(
        csv_column(run_dir, "val/rsum")
    )
    client, run = mlflow_client(run_dir.parent, monkeypatch)  # still one MLflow run
    assert run.info.run_id == pointer["run_id"] and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/rsum")] == [0, 1, 2]
    assert run.data.params["trainer.max_epochs"] == "2"  # MLflow keeps a param's first value (a warning says so)
    epoch, rsum = best_of(run_dir)
    assert client.get_metric_history(run.info.run_id, "best/val_rsum")[-1].value == pytest.approx(rsum)


@pytest.mark.parametrize(
    "yaml,expected",
    [
        (None, "error: unrecognized arguments: --tracking.wandb true"),
        ("tracking:\n  wandb: true\n", "error: Subcommand 'fit' does not accept option 'tracking.wandb'"),
        (
            "tracking: [tensorboard]\n",
            "error: tracking: ['tensorboard'] is not a set of options; write `tracking:` with",
        ),
    ],
)
def test_an_unknown_tracker_is_one_clear_line(yaml, expected, demo_root, tmp_path, cache_dir, capsys):
    args = tracked_fit(demo_root, tmp_path, "t", cache_dir)
    if yaml is None:
        args += ["--tracking.wandb", "true"]
    else:
        (tmp_path / "overlay.yaml").write_text(yaml)
        args += ["-c", str(tmp_path / "overlay.yaml")]
    assert main(args) == 2
    # (Lightning's own log lines may come first, or its handler's complaint about an earlier test's closed stderr)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error")]
    assert len(err) == 1 and err[0].startswith(expected)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("tracker,package", [("tensorboard", "tensorboard"), ("mlflow", "mlflow-skinny")])
def test_a_missing_tracker_package_is_one_clear_line(
    tracker, package, demo_root, tmp_path, cache_dir, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, tracker, None)  # import tensorboard / import mlflow now raise ImportError
    assert main(tracked_fit(demo_root, tmp_path, "t", cache_dir, tracker)) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error")]
    assert err == [
        f"error: tracking.{tracker} needs the {package} package: pip install {package} (or set "
        f"tracking.{tracker} false)"
    ]
    assert not (tmp_path / "results" / "t").exists()


def test_trackers_need_the_runs_csv_logger(demo_root, tmp_path, cache_dir, capsys):
    args = tracked_fit(demo_root, tmp_path, "t", cache_dir, "tensorboard") + ["--trainer.logger", "false"]
    assert main(args) == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == "error: tracking.* adds loggers beside the run's own CSV log: leave trainer.logger unset"
    )


def test_the_cli_imports_neither_tracker():
    # the GPU image has neither package: only asking for a tracker may import it
    code = (
        "import sys, clip_lab.__main__, clip_lab.train.cli; print(sorted({'mlflow', 'tensorboard'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert out.stdout.strip() == "[]"
