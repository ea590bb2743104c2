"""Experiment trackers beside a run's CSV log (`tracking.*` options): TensorBoard event files and MLflow runs."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from importlib import import_module
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from clip_lab.errors import ClipLabError
from clip_lab.files import save_json

log = logging.getLogger(__name__)

MLFLOW_POINTER = "mlflow_run.json"  # in the run folder: the MLflow run holding it, for a resumed fit and for `test`
MLFLOW_RUN_DIR_TAG = "clip_lab.run_dir"
Hyperparameters = dict[str, bool | int | float | str]


class Tracking:
    """Experiment trackers beside the run's CSV log, which is always written (the report and the figures read it).

    `fit` logs the hyperparameters, the epoch-level metrics (step = epoch) and at its end the best checkpoint; `test`
    adds its test/* metrics to the same run, at the tested checkpoint's epoch. `validate` logs nothing.

    Args:
        tensorboard: TensorBoard event files in `<results_dir>/<run>/tensorboard/` (`tensorboard --logdir
            <results_dir>` shows every run); needs `pip install tensorboard`.
        mlflow: an MLflow run named after `--run`; the best checkpoint becomes its artifact
            `checkpoints/best.ckpt`; needs `pip install mlflow-skinny`.
        mlflow_uri: the MLflow tracking URI; null: a local file store in `<results_dir>/mlruns`.
        mlflow_experiment: the MLflow experiment that holds the runs.
    """

    def __init__(
        self,
        tensorboard: bool = False,
        mlflow: bool = False,
        mlflow_uri: str | None = None,
        mlflow_experiment: str = "clip_lab",
    ) -> None:
        self.tensorboard = tensorboard
        self.mlflow = mlflow
        self.mlflow_uri = mlflow_uri
        self.mlflow_experiment = mlflow_experiment

    @property
    def enabled(self) -> bool:
        return self.tensorboard or self.mlflow

    def tracking_uri(self, run_dir: Path) -> str:
        uri = self.mlflow_uri or (run_dir.parent / "mlruns").resolve().as_uri()
        if urlparse(uri).scheme in ("", "file"):
            # MLflow >= 3.7 refuses a file store unless this is set ("maintenance mode"); its replacement, SQLite, needs
            # sqlalchemy and alembic, which mlflow-skinny does not bring. A user who set it to false keeps the refusal
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return uri

    def fit_loggers(
        self, run_dir: Path, hparams: Hyperparameters, monitor: str | None, resume_from: str | None = None
    ) -> list[Logger]:
        """The trackers' loggers for `fit`, to follow the run's CSV logger (the first logger names trainer.log_dir and
        the checkpoints' folder)."""
        resume_epoch = checkpoint_epoch(resume_from) if resume_from else None
        loggers: list[Logger] = []
        if self.tensorboard:
            require("tensorboard", "tensorboard")
            loggers.append(RunTensorBoardLogger(run_dir, hparams, monitor, resume_epoch))
        if self.mlflow:
            require("mlflow", "mlflow-skinny")
            uri = self.tracking_uri(run_dir)
            # a resumed fit continues its MLflow run: one training, one run, one metric history and one best checkpoint
            # (a second run would split them and `test` would have two to choose from)
            run_id = find_mlflow_run(run_dir, uri) if resume_from else None
            loggers.append(RunMLFlowLogger(run_dir, hparams, monitor, uri, self.mlflow_experiment, run_id))
        return loggers

    def test_callback(self, run_dir: Path) -> Callback:
        """For `test`: a callback that adds the test/* metrics to the run's trackers. Not a logger: the first logger
        would move trainer.log_dir, where test_metrics.json goes, away from the run folder."""
        if self.tensorboard:
            require("tensorboard", "tensorboard")
        if self.mlflow:
            require("mlflow", "mlflow-skinny")
        return TrackTest(self, run_dir)


def check_options(value: Any) -> None:
    """`tracking: [tensorboard]` or `tracking: true` in a YAML file would pass the parser and end in a traceback."""
    from jsonargparse import Namespace  # (here: importing this module must not need the CLI's parser)

    if not isinstance(value, Namespace):
        raise ClipLabError(
            f"tracking: {value!r} is not a set of options; write `tracking:` with `tensorboard: true` "
            "and/or `mlflow: true` below it, as configs/tracking/*.yaml do"
        )


def require(module: str, package: str) -> None:
    """Import the tracker's package only when it is asked for (neither is needed to train)."""
    try:
        import_module(module)
    except ImportError:
        raise ClipLabError(
            f"tracking.{module} needs the {package} package: pip install {package} (or set tracking.{module} false)"
        ) from None


def hyperparameters(
    run: str, seed: Any, max_epochs: int | None, model: Mapping[str, Any], data: Mapping[str, Any]
) -> Hyperparameters:
    """The run's hyperparameters as flat `model.lr`-style keys (the command-line names), plain values only.

    The trainer would pass the model's and the data's merged into one flat dict; these keep them apart and add the run
    name, the seed and the epochs (the learning-rate schedule spans them).
    """
    params: dict[str, Any] = {"run": run, "seed_everything": seed, "trainer.max_epochs": max_epochs}
    for prefix, values in (("model", model), ("data", data)):
        params.update({f"{prefix}.{k}": v for k, v in values.items() if not k.startswith("_")})  # (the CLI's own)
    # None and lists as text: TensorBoard would drop a None hyperparameter, MLflow stores text anyway
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()}


def checkpoint_epoch(path: str | os.PathLike) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("epoch", 0))


def best_key(monitor: str) -> str:
    return "best/" + monitor.replace("/", "_")  # val/rsum -> best/val_rsum


def best_checkpoint(callback: ModelCheckpoint | None) -> tuple[str, int, float] | None:
    """(path, epoch, score) of the best checkpoint so far, or None (no checkpoint or no monitored metric)."""
    if callback is None or not callback.best_model_path or callback.best_model_score is None:
        return None
    path = callback.best_model_path
    return path, checkpoint_epoch(path), float(callback.best_model_score)


def by_epoch(metrics: Mapping[str, float], step: int | None) -> tuple[dict[str, float], int | None]:
    """Lightning passes the epoch among the metrics; every metric clip_lab logs is an epoch-level one (on_epoch=True),
    so the epoch is the step: curves of runs with other batch sizes or datasets line up."""
    metrics = dict(metrics)  # the trainer hands the same dict to every logger
    epoch = metrics.pop("epoch", None)
    return metrics, int(epoch) if epoch is not None else step


def mlflow_key(name: str) -> str:
    # the characters MLflow accepts in a metric name (Lightning's own rule, without its warning per call): R@1 -> R1
    return re.sub(r"[^a-zA-Z0-9_/. -]", "", name)


class RunTensorBoardLogger(TensorBoardLogger):
    """Event files in `<run>/tensorboard/`: epoch-level scalars at step = epoch; the hyperparameters in the HParams
    dashboard against the monitored metric and its best value; at the end of a fit the best checkpoint's score as
    the scalar `best/val_rsum` (at its epoch) and its path as the text `best/checkpoint`."""

    def __init__(
        self, run_dir: Path, hparams: Hyperparameters, monitor: str | None, resume_epoch: int | None = None
    ) -> None:
        # a resumed fit appends to the same folder; purge_step makes TensorBoard drop what an interrupted run logged
        # for the epochs that are trained again (as RunCSVLogger drops their rows)
        purge = {} if resume_epoch is None else {"purge_step": resume_epoch + 1}
        super().__init__(save_dir=str(run_dir), name="", version="tensorboard", default_hp_metric=False, **purge)
        self.run_hparams, self.monitor = hparams, monitor
        self.checkpoint: ModelCheckpoint | None = None

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics(*by_epoch(metrics, step))

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: Any = None, step: int | None = None) -> None:
        from torch.utils.tensorboard.summary import hparams

        self.hparams.update(self.run_hparams)  # (hparams.yaml beside the event files)
        # the HParams dashboard reads the named metrics from the scalars; no value is written here (Lightning's
        # default would add a fake point at step 0)
        names = {self.monitor: 0, best_key(self.monitor): 0} if self.monitor else {}
        writer = self.experiment._get_file_writer()
        for summary in hparams(self.run_hparams, names):
            writer.add_summary(summary)

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        self.checkpoint = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str) -> None:
        best = best_checkpoint(self.checkpoint) if status == "success" and self.monitor else None
        if best:  # (TensorBoard stores no files: the path and the score)
            path, epoch, score = best
            path = str(Path(path).resolve())
            self.experiment.add_scalar(best_key(self.monitor), score, epoch)
            self.experiment.add_text("best/checkpoint", f"{path} (epoch {epoch}, {self.monitor} {score:.4f})", epoch)
            self.checkpoint = None
        super().finalize(status)


class RunMLFlowLogger(MLFlowLogger):
    """An MLflow run named after the clip_lab run: the hyperparameters as params, epoch-level metrics at step = epoch,
    and at the end of a fit the best checkpoint as the artifact `checkpoints/best.ckpt`, its score as the metric
    `best/val_rsum` (at its epoch) and its path and epoch as tags. `@` is not allowed in MLflow names: R@1 is R1."""

    def __init__(
        self,
        run_dir: Path,
        hparams: Hyperparameters,
        monitor: str | None,
        tracking_uri: str,
        experiment: str,
        run_id: str | None = None,
    ) -> None:
        # log_model stays off: it would upload last.ckpt beside best.ckpt; finalize uploads the best one alone
        super().__init__(
            experiment_name=experiment,
            run_name=str(hparams["run"]),
            tracking_uri=tracking_uri,
            tags={MLFLOW_RUN_DIR_TAG: str(run_dir.resolve())},
            run_id=run_id,
        )
        self.run_dir, self.run_hparams, self.monitor, self.resumed = run_dir, hparams, monitor, run_id is not None
        self.checkpoint: ModelCheckpoint | None = None

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        from mlflow.entities import Param, RunStatus
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        client, run_id = self.experiment, self.run_id
        save_pointer(self.run_dir, self._tracking_uri, run_id)
        values = {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in self.run_hparams.items()}
        logged = client.get_run(run_id).data.params if self.resumed else {}
        changed = sorted(k for k, v in values.items() if k in logged and logged[k] != v)
        if changed:  # MLflow refuses to change a param; the run's metrics go on regardless
            log.warning(
                "MLflow run %s keeps the values its params had before the resume: %s",
                run_id,
                ", ".join(f"{k} {logged[k]} (now {values[k]})" for k in changed),
            )
        if self.resumed:
            client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        new = [Param(k, v) for k, v in values.items() if k not in logged]
        for i in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=new[i : i + 100])

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics, step = by_epoch(metrics, step)
        super().log_metrics({mlflow_key(k): v for k, v in metrics.items()}, step)

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        self.checkpoint = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        best = best_checkpoint(self.checkpoint) if status == "success" and self.monitor and self._initialized else None
        if best:
            path, epoch, score = best
            client, run_id = self.experiment, self.run_id
            client.log_artifact(run_id, path, "checkpoints")
            client.log_metric(run_id, mlflow_key(best_key(self.monitor)), score, step=epoch)
            client.set_tag(run_id, "best_checkpoint", str(Path(path).resolve()))
            client.set_tag(run_id, "best_epoch", str(epoch))
            self.checkpoint = None
        super().finalize(status)


def save_pointer(run_dir: Path, tracking_uri: str, run_id: str) -> None:
    save_json({"tracking_uri": tracking_uri, "run_id": run_id}, run_dir / MLFLOW_POINTER)


def find_mlflow_run(run_dir: Path, tracking_uri: str) -> str | None:
    """The id of the MLflow run that `run_dir`'s fit logged to (its mlflow_run.json), if that run is still in the
    store at `tracking_uri`; otherwise None, with a warning: a new MLflow run is started."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    pointer = json.loads((run_dir / MLFLOW_POINTER).read_text()) if (run_dir / MLFLOW_POINTER).is_file() else None
    if pointer and pointer["tracking_uri"] == tracking_uri:
        try:
            if MlflowClient(tracking_uri).get_run(pointer["run_id"]).info.lifecycle_stage == "active":
                return pointer["run_id"]
        except MlflowException as e:  # (gone from the store: a new run; any other failure is not ours to hide)
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    where = f"{run_dir / MLFLOW_POINTER} names none in {tracking_uri}" if pointer else f"no {run_dir / MLFLOW_POINTER}"
    log.warning("no MLflow run of %s to continue (%s): starting a new one", run_dir, where)
    return None


class TrackTest(Callback):
    """`test` adds its test/* metrics (step = the tested checkpoint's epoch) to the run's TensorBoard folder and to its
    fit's MLflow run (a new MLflow run if the fit had none), and tags that run with the tested checkpoint."""

    def __init__(self, tracking: Tracking, run_dir: Path) -> None:
        self.tracking, self.run_dir = tracking, run_dir

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        epoch = checkpoint_epoch(trainer.ckpt_path) if trainer.ckpt_path else 0
        if self.tracking.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(self.run_dir / "tensorboard") as writer:
                for k, v in metrics.items():
                    writer.add_scalar(k, v, epoch)
        if self.tracking.mlflow:
            from mlflow.entities import Metric, RunStatus
            from mlflow.tracking import MlflowClient

            uri = self.tracking.tracking_uri(self.run_dir)
            client = MlflowClient(uri)
            run_id = find_mlflow_run(self.run_dir, uri)
            if run_id is None:  # a checkpoint of a fit without MLflow: its test metrics in a run of their own
                experiment = client.get_experiment_by_name(self.tracking.mlflow_experiment)
                experiment_id = (
                    experiment.experiment_id
                    if experiment
                    else client.create_experiment(self.tracking.mlflow_experiment)
                )
                run_id = client.create_run(
                    experiment_id, run_name=self.run_dir.name, tags={MLFLOW_RUN_DIR_TAG: str(self.run_dir.resolve())}
                ).info.run_id
                client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
                save_pointer(self.run_dir, uri, run_id)
            stamp = int(1000 * time.time())
            client.log_batch(run_id, metrics=[Metric(mlflow_key(k), v, stamp, epoch) for k, v in metrics.items()])
            if trainer.ckpt_path:
                client.set_tag(run_id, "test_checkpoint", str(Path(trainer.ckpt_path).resolve()))
