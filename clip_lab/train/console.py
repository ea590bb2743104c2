"""What fit, validate and test print: the model's size, the best checkpoint and the command to run next, a compact
recall table; the few Lightning lines that say nothing here are filtered out by their exact text."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, RichModelSummary
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from clip_lab.eval.metrics import KS

# Lightning logs its info lines (rank_zero_info) to this logger; the messages below start with these exact words
LIGHTNING_INFO = "lightning.pytorch.utilities.rank_zero"
QUIET = (
    "💡 Tip: For seamless cloud logging",  # an advertisement for Lightning's litlogger
    "TPU available: False",  # the lab never runs on TPUs; "GPU available: ..., used: ..." stays
    "Loading `train_dataloader` to estimate number of stepping batches.",  # the LR schedule's length, in passing
)


class QuietLightning(logging.Filter):
    """Drops Lightning's info lines that start with one of QUIET; every other line and every warning passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(QUIET)


def quiet_lightning() -> None:
    """Filter QUIET out of Lightning's info log (once per process: main() runs many times in a sweep or the tests)."""
    logger = logging.getLogger(LIGHTNING_INFO)
    if not any(isinstance(f, QuietLightning) for f in logger.filters):
        logger.addFilter(QuietLightning())


class ModelSize(ModelSummary):
    """Lightning's model summary as plain text, less its FLOPs column and total: Lightning counts FLOPs only with an
    example input, which this model has none of, so they always read 0."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [(name, [str(v) for v in values]) for name, values in summary_data if name != "FLOPs"]
        widths = [max([len(name), *map(len, values)]) for name, values in columns]
        rows = [[name for name, _ in columns], *zip(*(values for _, values in columns))]
        lines = ["  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)).rstrip() for row in rows]
        frozen = total_parameters - trainable_parameters
        lines.append(
            f"{get_human_readable_count(trainable_parameters).strip()} trainable and "
            f"{get_human_readable_count(frozen).strip()} frozen parameters, {model_size:.1f} MB"
        )
        print("\n".join(lines))


def plain_summary(trainer: Trainer) -> None:
    """Put ModelSize in place of the summary Lightning chose by default (its Rich table when `rich` is installed)."""
    trainer.callbacks = [
        ModelSize(getattr(cb, "_max_depth", 1)) if type(cb) in (ModelSummary, RichModelSummary) else cb
        for cb in trainer.callbacks
    ]


def recall_table(metrics: Mapping[str, float]) -> str:
    """Rows i2t and t2i, columns R@1 R@5 R@10 (3 decimals), then the R-sum: `metrics` keys like `i2t_R@1`, `rsum`."""
    lines = [" " * 6 + "".join(f"{f'R@{k}':>8}" for k in KS)]
    for direction in ("i2t", "t2i"):
        lines.append(f"{direction:<6}" + "".join(f"{metrics[f'{direction}_R@{k}']:>8.3f}" for k in KS))
    lines.append(f"{'rsum':<6}{metrics['rsum']:>8.3f}")
    return "\n".join(lines)


def test_command(run_dir: Path, results_dir: str) -> str:
    """The command that tests a fitted run with its best checkpoint."""
    extra = "" if results_dir == "results" else f" --results_dir {results_dir}"
    return f"python -m clip_lab test -c {run_dir / 'config.yaml'}{extra}"


def fit_summary(checkpoint: ModelCheckpoint, run_dir: Path, results_dir: str) -> str:
    """The lines `fit` ends with: its best checkpoint, the validation score that chose it, and the test command."""
    best = checkpoint.best_model_path
    if not best or not Path(best).is_file():
        return (
            f"fit done, without a best checkpoint ({checkpoint.monitor} was never measured); the last one: "
            f"{checkpoint.last_model_path or 'none'}"
        )
    epoch = torch.load(best, map_location="cpu", weights_only=True, mmap=True).get("epoch")
    score = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else float("nan")
    return (
        f"fit done: best checkpoint {best} (epoch {epoch}, {checkpoint.monitor} {score:.3f})\n"
        f"next, test it: {test_command(run_dir, results_dir)}"
    )


def test_summary(result: Mapping[str, Any], path: Path) -> str:
    """Where `test` wrote its results, and its recall table (the run's test_metrics.json, `result`)."""
    m, protocol = result["metrics"], result.get("protocol") or {}
    return (
        f"test of {result.get('checkpoint')} on {result.get('split')} (protocol {protocol.get('name')}: "
        f"{int(m['n_images'])} images, {int(m['n_captions'])} captions); results in {path}\n" + recall_table(m)
    )


def validate_summary(callback_metrics: Mapping[str, Any], ckpt_path: str | None) -> str | None:
    """The recall table of a `validate` (its val/* metrics); None when validation measured none."""
    metrics = {k.removeprefix("val/"): float(v) for k, v in callback_metrics.items() if k.startswith("val/")}
    needed: Sequence[str] = [f"{d}_R@{k}" for d in ("i2t", "t2i") for k in KS] + ["rsum", "n_images", "n_captions"]
    if not all(k in metrics for k in needed):
        return None
    return (
        f"validation of {ckpt_path}: {int(metrics['n_images'])} images, {int(metrics['n_captions'])} captions\n"
        + recall_table(metrics)
    )
