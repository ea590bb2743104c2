"""`python -m clip_lab fit|validate|test -c config.yaml`: the LightningCLI with run folders under results/<run>/."""

from __future__ import annotations

import csv
import logging
import sys
import time
import warnings
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger

from clip_lab.data.datamodule import RetrievalData
from clip_lab.errors import ClipLabError
from clip_lab.files import read_json
from clip_lab.models.text_towers import LSTMTextTower
from clip_lab.options import renamed
from clip_lab.train.console import fit_summary, plain_summary, quiet_lightning, test_summary, validate_summary
from clip_lab.train.module import ARCHITECTURE, ClipLab, check_compatible
from clip_lab.train.results import TestResults
from clip_lab.train.runstats import RunStats
from clip_lab.train.tracking import Tracking, check_options, hyperparameters

log = logging.getLogger(__name__)


class SaveFitConfig(SaveConfigCallback):
    """Save the resolved config as results/<run>/config.yaml when fitting; `test` leaves the run's config alone."""

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


class RunCSVLogger(CSVLogger):
    """`results/<run>/metrics.csv`; on a resumed fit it keeps the rows of the epochs the checkpoint holds (Lightning's
    CSVLogger would delete the file) and drops those of the epoch that was cut short, which is trained again."""

    def __init__(self, results_dir: str, run: str, resume_from: str | None = None) -> None:
        super().__init__(save_dir=results_dir, name=run, version="")
        self.resume_from = resume_from

    @property
    def experiment(self) -> Any:
        if self._experiment is not None or not self.resume_from:
            return super().experiment
        path = Path(self.log_dir) / "metrics.csv"
        rows = list(csv.DictReader(path.open(newline=""))) if path.is_file() else []
        last = torch.load(self.resume_from, map_location="cpu", weights_only=True, mmap=True).get("epoch", -1)
        experiment = super().experiment  # (deletes the old file)
        kept = [r for r in rows if r.get("epoch") not in (None, "") and int(float(r["epoch"])) <= last]
        if kept:
            experiment.metrics_keys = sorted(kept[0].keys())
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=experiment.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
        return experiment


class BestWeightsCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose best checkpoint holds the weights alone (with the model's and the data's settings): what
    test, validate, search, zeroshot and embed read. last.ckpt stays whole, optimizer, schedule and loops included:
    a killed run resumes from it. (With AdamW's two moments a whole checkpoint is about 3x the weights.)"""

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's own key, so a last.ckpt written before this class existed still resumes its best score
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        whole = self.save_weights_only
        # weights only for every file but last.ckpt, when a whole last.ckpt is kept (not a link to the best one)
        self.save_weights_only = whole or (self.save_last is True and filepath != self.last_model_path)
        try:
            super()._save_checkpoint(trainer, filepath)
        finally:
            self.save_weights_only = whole


class ClipLabCLI(LightningCLI):
    """Adds `--run NAME`: config, CSV log, checkpoints and test metrics of a run all land in `<results_dir>/NAME/`."""

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        return super().init_parser(**kwargs, exit_on_error=False)  # main() turns the error into one line

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run", type=str, default="baseline", help="run name: outputs go to <results_dir>/<run>/")
        parser.add_argument("--results_dir", type=str, default="results", help="folder holding one folder per run")
        parser.add_class_arguments(Tracking, "tracking")  # TensorBoard / MLflow beside the CSV log
        parser.link_arguments("data.embed_dim", "model.embed_dim", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.image_size")
        parser.link_arguments("model.text_encoder", "data.text_encoder")  # tokens instead of cached embeddings
        parser.add_lightning_class_args(BestWeightsCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/rsum",  # sum of the six recalls: the usual single retrieval score
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                "checkpoint.save_last": True,
                "checkpoint.enable_version_counter": False,
                "trainer.precision": None,  # chosen from the accelerator in instantiate_trainer
            }
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # fit, validate, test; Lightning's `predict` has no meaning for this model: `python -m clip_lab embed`
        # writes embeddings of a split, a folder of images or a file of texts
        return {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):  # after_validate / after_test print a compact table instead (--verbose
            parser.set_defaults(verbose=False)  # true: Lightning's table of every logged value)
        return parser

    def _run_dir(self) -> Path:
        config = self.config[self.config["subcommand"]]
        return Path(config.results_dir) / config.run

    def _parse_ckpt_path(self) -> None:
        sub = self.config.get("subcommand")
        if sub in ("validate", "test") and not self.config[sub].get("ckpt_path"):
            # evaluating without trained weights would score a random head and, for test, overwrite the run's
            # results with that: take the run's best checkpoint, or stop
            best = self._run_dir() / "checkpoints" / "best.ckpt"
            if not best.is_file():
                raise ClipLabError(
                    f"{sub} needs trained weights and {best} does not exist: pass --ckpt_path "
                    "results/<run>/checkpoints/best.ckpt of a finished fit (or --run <that run>); "
                    + fitted_runs(Path(self.config[sub].results_dir), "checkpoints/best.ckpt")
                )
            log.info("%s: no --ckpt_path given, using the run's best checkpoint %s", sub, best)
            self.config[sub]["ckpt_path"] = str(best)
        # Lightning replaces the config's model options by the checkpoint's: refuse instead when the architecture
        # asked for differs, rather than silently running another model than the one on the command line
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt and Path(ckpt).is_file():
            stored = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {})
            model = self.config[sub]["model"]
            check_compatible(stored, {k: model.get(k) for k in ARCHITECTURE if k != "embed_dim"})  # linked later
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        check_options(self.config[self.subcommand].get("tracking"))
        ckpt = self.config[self.subcommand].get("ckpt_path")
        if ckpt and not Path(ckpt).is_file():
            raise ClipLabError(
                f"checkpoint {ckpt} does not exist; runs keep theirs in results/<run>/checkpoints/ "
                "(best.ckpt, last.ckpt)"
            )
        if self.subcommand != "fit":
            return
        if ckpt and "optimizer_states" not in torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True):
            raise ClipLabError(
                f"{ckpt} holds the model's weights alone (best.ckpt keeps no optimizer state), so a fit cannot "
                f"resume from it: pass --ckpt_path {Path(ckpt).parent / 'last.ckpt'}"
            )
        run_dir = self._run_dir()
        used = run_dir.is_dir() and any(
            p.name in ("config.yaml", "metrics.csv", "checkpoints") for p in run_dir.iterdir()
        )
        if used and not self.config.fit.ckpt_path:
            raise ClipLabError(
                f"{run_dir} already holds a run; choose another --run name, delete the folder, or resume it with "
                f"--ckpt_path {run_dir}/checkpoints/last.ckpt"
            )

    def before_fit(self) -> None:
        # a split smaller than one batch would "train" zero steps and exit 0: stop before any cache is built
        self.datamodule.check_trainable(self.trainer.world_size)
        connect_text(self.model, self.datamodule, fit=True)

    def before_validate(self) -> None:
        connect_text(self.model, self.datamodule)

    def before_test(self) -> None:
        connect_text(self.model, self.datamodule)

    def after_fit(self) -> None:
        if self.trainer.is_global_zero and self.trainer.checkpoint_callback is not None:
            print(fit_summary(self.trainer.checkpoint_callback, self._run_dir(), self.config.fit.results_dir))

    def after_validate(self) -> None:
        text = validate_summary(self.trainer.callback_metrics, self.trainer.ckpt_path)
        if self.trainer.is_global_zero and text:
            print(text)

    def after_test(self) -> None:
        path = Path(self.trainer.log_dir) / "test_metrics.json"  # where TestResults wrote (a collective under DDP)
        fresh = path.is_file() and path.stat().st_mtime >= self._started
        if self.trainer.is_global_zero and fresh and (result := read_json(path)):
            print(test_summary(result, path))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand]
        run_dir = self._run_dir()
        kwargs.setdefault("default_root_dir", str(run_dir))
        if config.trainer.get("logger") in (None, True):
            # fit logs a CSV per epoch into the run folder, then to the trackers asked for (the CSV logger first: the
            # first logger names trainer.log_dir and the checkpoints' folder); test writes test_metrics.json there
            resume = config.get("ckpt_path") if self.subcommand == "fit" else None
            logger = RunCSVLogger(config.results_dir, config.run, resume) if self.subcommand == "fit" else False
            if logger and config.tracking.enabled:
                hparams = hyperparameters(
                    config.run,
                    config.seed_everything,
                    config.trainer.max_epochs,
                    self.model.hparams,
                    self.datamodule.hparams,
                )
                logger = [logger, *config.tracking.fit_loggers(run_dir, hparams, config.checkpoint.monitor, resume)]
            kwargs.setdefault("logger", logger)
        elif config.tracking.enabled and self.subcommand == "fit":
            raise ClipLabError("tracking.* adds loggers beside the run's own CSV log: leave trainer.logger unset")
        if config.trainer.get("precision") is None:  # bf16 where it is fast: on a GPU, not on a CPU
            on_gpu = config.trainer.get("accelerator") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
            kwargs.setdefault("precision", "bf16-mixed" if on_gpu else "32-true")
        trainer = super().instantiate_trainer(**kwargs)
        self._started = time.time()  # after_test prints the test_metrics.json written after this, not an older one
        if self.subcommand == "fit":
            plain_summary(trainer)  # the model's size, without Lightning's FLOPs (always 0 here)
            trainer.callbacks.append(RunStats())  # results/<run>/run_stats.json: hardware, time, images/s
        if self.subcommand == "test":
            trainer.callbacks.append(TestResults())  # results/<run>/test_metrics.json and the report's examples
        if self.subcommand == "test" and config.tracking.enabled:  # test/* to the run's trackers too
            trainer.callbacks.append(config.tracking.test_callback(run_dir))
        return trainer


def connect_text(model: ClipLab, data: RetrievalData, fit: bool = False) -> None:
    """Wire a trained text encoder to the data: batches then carry its token rows instead of cached embeddings.

    Before a fit an LSTM's vocabulary is fitted to the training captions; a checkpoint being resumed or evaluated
    brings its own, which replaces it when the checkpoint loads (the tokenizer reads the vocabulary at that time).
    """
    if model.text_tower is None:
        return
    if fit and isinstance(model.text_tower, LSTMTextTower) and not model.text_tower.vocabulary:
        model.text_tower.fit_vocabulary(data.split(data.hparams.train_split).captions)
    data.use_tokenizer(model.text_tower.tokenize)


def check_config_files(argv: Sequence[str]) -> None:
    """A run's `-c results/<run>/config.yaml` that does not exist: one line saying the run has not been fitted, the
    runs that have been, and the command that fits it (jsonargparse would only say the file does not exist)."""
    values = [b for a, b in zip(argv, argv[1:]) if a in ("-c", "--config")]
    values += [a.partition("=")[2] for a in argv if a.startswith("--config=")]
    missing = next((Path(v) for v in values if Path(v).name == "config.yaml" and not Path(v).exists()), None)
    if missing is None:
        return
    given = [b for a, b in zip(argv, argv[1:]) if a == "--results_dir"]
    given += [a.partition("=")[2] for a in argv if a.startswith("--results_dir=")]
    run_dir = missing.parent
    root = Path(given[-1] if given else "results")
    if run_dir.parts[: len(root.parts)] != root.parts or run_dir == root:  # not under it: the folder above the run's
        root = run_dir.parent
    run = run_dir.relative_to(root).as_posix()
    rd = "" if root == Path("results") else f" --results_dir {root}"
    raise ClipLabError(
        f"run {run} has not been fitted: there is no {missing}; {fitted_runs(root)}. Fit it first: "
        f"python -m clip_lab fit -c configs/coco.yaml --run {run}{rd}"
    )


def fitted_runs(root: Path, marker: str = "config.yaml") -> str:
    """`fitted runs in <root>/: a, b` (the folders under `root` holding `marker`), or that there are none."""
    up = len(Path(marker).parts)  # from the marker file back to its run folder
    found = root.glob(f"**/{marker}") if root.is_dir() else []
    runs = sorted(p.parents[up - 1].relative_to(root).as_posix() for p in found)
    shown = ", ".join(runs[:8]) + (f" and {len(runs) - 8} more" if len(runs) > 8 else "")
    return f"fitted runs in {root}/: {shown}" if runs else f"no run in {root}/ has been fitted yet"


def main(argv: list[str] | None = None) -> ClipLabCLI:
    quiet_lightning()  # the litlogger tip, the TPU line: nothing a student can use
    if torch.cuda.is_available():  # TF32 matmuls, as Lightning's hint asks (no effect on a CPU)
        torch.set_float32_matmul_precision("high")
    argv = renamed(sys.argv[1:] if argv is None else argv, {"--ckpt_path", "--run"})  # old spellings, with a warning
    check_config_files(argv)
    with warnings.catch_warnings():
        # main(argv) is called in-process by the demo and the tests; the CLI warns about that by default
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        # deprecations inside Lightning itself (with torch>=2.13 and jsonargparse>=4.49): nothing a user can act on
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        # jsonargparse 4.x deprecations of the API Lightning's CLI calls ((?s): their messages start with a newline)
        warnings.filterwarnings("ignore", message=r"(?s).*(was deprecated in v4\.|JsonargparseDeprecationWarning)")
        # CSVLogger's alarm about a run folder that holds files: it deletes metrics.csv alone, which a fit only finds
        # when resuming (RunCSVLogger keeps its rows); the folder's other files (a demo's kept results) stay as they are
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        try:
            return ClipLabCLI(
                ClipLab,
                RetrievalData,
                save_config_callback=SaveFitConfig,
                save_config_kwargs={"overwrite": True},
                args=argv,
                auto_configure_optimizers=False,
            )
        except ArgumentError as e:  # unknown keys, wrong types, missing config files: one line, nothing written
            job = next((a for a in (argv or []) if not a.startswith("-")), "fit")
            message = " ".join(str(e).split())
            raise ClipLabError(f"{message} (python -m clip_lab {job} --help lists every option)") from None
        finally:
            end_process_group()


def end_process_group() -> None:
    """Destroy the process group a multi-process job made (Lightning leaves it standing). Left to the interpreter's
    exit, gloo's worker threads are destroyed still joinable now and then, and the process aborts ("terminate called
    without an active exception", SIGABRT) after its work was done and written; PyTorch asks for this call too."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
