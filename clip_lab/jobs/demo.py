"""`python -m clip_lab demo`: generate a small COCO-format dataset, train on the CPU, test, recall beside chance."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from clip_lab.data.synthetic import make_demo_dataset
from clip_lab.files import CONFIGS
from clip_lab.options import JobParser
from clip_lab.train import cli

log = logging.getLogger(__name__)

# what the demo's fit and test write into its run folder: a new demo replaces these and keeps everything else there
# (a student's search, zeroshot and embed results, notes)
RUN_OUTPUTS = (
    "config.yaml",
    "hparams.yaml",
    "metrics.csv",
    "run_stats.json",
    "split_lists.json",
    "checkpoints",
    "test_metrics.json",
    "test_examples.json",
    "test_embeddings.pt",
)


def clear_run(run_dir: Path) -> list[str]:
    """Remove an earlier demo's fit and test outputs (RUN_OUTPUTS) from `run_dir`; return the names left there."""
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []


def recall_table(metrics: dict[str, float], n_images: int, first_caption: dict[str, float] | None = None) -> str:
    """Recall@K in both directions beside chance (a caption has 1 of N images; an image's ~5 captions are among ~5N,
    so its chance is about the same), and, if given, the first-caption protocol most course submissions report."""
    extra = f"{'1st caption':>13}" if first_caption else ""
    rows = [f"{'metric':<12}{'model':>9}{'chance':>9}{'x chance':>10}{extra}"]
    for direction in ("i2t", "t2i"):
        for k in (1, 5, 10):
            key = f"{direction}_R@{k}"
            value, chance = metrics[key], min(1.0, k / n_images)
            extra = f"{first_caption[key]:>13.3f}" if first_caption else ""
            rows.append(f"{direction + ' R@' + str(k):<12}{value:>9.3f}{chance:>9.3f}{value / chance:>10.1f}{extra}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = JobParser(prog="python -m clip_lab demo", description=__doc__)
    parser.add_argument("--data", default="cache/demo_coco", help="where the generated dataset goes")
    parser.add_argument(
        "--run",
        default="demo",
        help="run name: an earlier demo's fit and test outputs in <results_dir>/<run>/ are replaced, other files kept",
    )
    parser.add_argument("--results_dir", default="results", help="folder holding one folder per run")
    parser.add_argument("--n_train", type=int, default=2000)
    parser.add_argument("--n_val", type=int, default=400)
    parser.add_argument("--max_epochs", type=int, default=None, help="override the demo config's epochs")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    make_demo_dataset(args.data, args.n_train, args.n_val, workers=os.cpu_count() or 1)
    run_dir = Path(args.results_dir) / args.run
    kept = clear_run(run_dir)  # the demo owns its fit and test outputs, not the rest of the folder
    if kept:
        log.info("demo: replacing the earlier demo run in %s; kept there: %s", run_dir, ", ".join(kept))
    common = [
        "--run",
        args.run,
        "--results_dir",
        args.results_dir,
        "--data.data_root",
        args.data,
        "--data.text_model",
        f"{args.data}/clip_tiny",
    ]
    fit = ["fit", "-c", str(CONFIGS / "coco.yaml"), "-c", str(CONFIGS / "demo.yaml"), *common]
    if args.max_epochs is not None:
        fit += ["--trainer.max_epochs", str(args.max_epochs)]
    cli.main(fit)
    cli.main(["test", "-c", str(run_dir / "config.yaml"), "--ckpt_path", str(run_dir / "checkpoints" / "best.ckpt")])

    result = json.loads((run_dir / "test_metrics.json").read_text())
    m = result["metrics"]
    # the digits depend on the CPU thread count too (it orders the float sums of every step): say it beside them
    print(
        f"\nclip_lab demo: test on {m['n_images']} images / {m['n_captions']} captions "
        f"({time.perf_counter() - t0:.0f} s in all, {torch.get_num_threads()} CPU threads; results in {run_dir}/)"
    )
    print(recall_table(m, m["n_images"], result["first_caption"]["metrics"]))
    print(
        "model: the standard protocol (any of an image's captions counts); 1st caption: each image against first "
        "captions only (diagonal), as most course submissions report it"
    )
    return result
