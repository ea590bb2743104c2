"""`python -m clip_lab sweep`: every ablation over several seeds, then test recall as mean ± std against the baseline.

A variant is a list of YAML overlays from `configs/ablations/` stacked on the base config: `bn_head` is
`ablations/bn_head.yaml`, `bn_head+augment` stacks two. Runs land in `results/<run>/<variant>/seed<k>/`; a run whose
`test_metrics.json` exists is reused, so an interrupted sweep resumes where it stopped. The summary goes to
`results/<run>.json` and `results/<run>.md`.

A difference counts as beyond the seed-to-seed spread when it exceeds two standard errors of the difference of
the two means, `2 * sqrt(s_base^2 / n_base + s_variant^2 / n_variant)` (about a 95 % two-sided test); with a single
seed nothing can be said, and the table says so.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from clip_lab.errors import ClipLabError
from clip_lab.eval.seeds import summarize
from clip_lab.files import CONFIGS, save_json, save_text
from clip_lab.options import JobParser
from clip_lab.report.tables import sweep_markdown
from clip_lab.train import cli

log = logging.getLogger(__name__)

ABLATIONS = CONFIGS / "ablations"
DEFAULT_VARIANTS = ("baseline", "bn_head", "augment", "bn_head+augment", "freeze_stem")


def overlays(variant: str) -> list[Path]:
    """The YAML files a variant stacks on the base config (`baseline`: none)."""
    if variant == "baseline":
        return []
    files = [ABLATIONS / f"{part}.yaml" for part in variant.split("+")]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        known = ", ".join(sorted(p.stem for p in ABLATIONS.glob("*.yaml")))
        raise ClipLabError(
            f"variant {variant!r}: no {', '.join(missing)} in {ABLATIONS}; known ablations: {known} "
            "(combine them with '+', e.g. bn_head+augment)"
        )
    return files


def run_variant(variant: str, seed: int, args: argparse.Namespace, step: str = "") -> Path:
    """Fit and test one (variant, seed) unless its results exist; return the run folder. `step` says which run of
    the sweep it is ("3 of 10")."""
    run = f"{args.run}/{variant}/seed{seed}"
    run_dir = Path(args.results_dir) / run
    if (run_dir / "test_metrics.json").is_file():
        log.info("sweep run %s: %s seed %d done already, reusing %s", step, variant, seed, run_dir)
        return run_dir
    if run_dir.exists():  # an interrupted run of this sweep: the sweep owns the folder, start it over
        log.info("sweep run %s: %s seed %d is incomplete in %s, running it again", step, variant, seed, run_dir)
        shutil.rmtree(run_dir)
    else:
        log.info("sweep run %s: %s seed %d -> %s", step, variant, seed, run_dir)
    configs = [c for base in args.config for c in ("-c", str(base))]
    configs += [c for f in overlays(variant) for c in ("-c", str(f))]
    cli.main(
        [
            "fit",
            *configs,
            "--run",
            run,
            "--results_dir",
            args.results_dir,
            "--seed_everything",
            str(seed),
            "--data.seed",
            str(seed),
            *args.overrides,
        ]
    )
    cli.main(["test", "-c", str(run_dir / "config.yaml"), "--ckpt_path", str(run_dir / "checkpoints" / "best.ckpt")])
    return run_dir


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = JobParser(
        prog="python -m clip_lab sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-c",
        "--config",
        action="append",
        default=None,
        help="base config(s), stacked in order (default: configs/coco.yaml)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(DEFAULT_VARIANTS),
        help="baseline and ablation names from configs/ablations/, '+' stacks several",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per variant")
    parser.add_argument(
        "--run", default="ablations", help="the sweep's name: results/<run>/ holds its runs, results/<run>.md its table"
    )
    parser.add_argument("--results_dir", default="results")
    parser.add_argument(
        "overrides", nargs="*", help="after '--': options for every fit, e.g. -- --trainer.max_epochs 3"
    )
    args = parser.parse_args(argv)
    args.config = args.config or [str(CONFIGS / "coco.yaml")]
    if args.seeds < 1:
        raise ClipLabError("--seeds must be at least 1")
    if "baseline" not in args.variants:
        args.variants.insert(0, "baseline")  # every comparison is against it
    for variant in args.variants:
        overlays(variant)  # check every name before the first hour of training
    seeds = list(range(args.seeds))

    total, step = len(args.variants) * len(seeds), itertools.count(1)  # variant by variant, seed by seed
    runs = {v: [run_variant(v, s, args, f"{next(step)} of {total}") for s in seeds] for v in args.variants}
    tests = {v: [json.loads((d / "test_metrics.json").read_text()) for d in dirs] for v, dirs in runs.items()}
    summary = summarize({v: [t["metrics"] for t in results] for v, results in tests.items()})
    result = {
        "protocol": tests["baseline"][0]["protocol"],
        "seeds": seeds,
        "order": args.variants,  # the JSON's keys get sorted; tables and figures follow this order
        "base_configs": args.config,
        "overrides": args.overrides,
        "variants": {
            v: {"overlays": [str(f) for f in overlays(v)], "runs": [str(d) for d in runs[v]], **summary[v]}
            for v in args.variants
        },
    }
    out = Path(args.results_dir) / f"{args.run}.json"
    save_json(result, out)
    table = sweep_markdown(summary, seeds, args.variants)
    save_text(table, out.with_suffix(".md"))
    print(f"\n{table}\nwritten: {out} and {out.with_suffix('.md')}")
    return result
