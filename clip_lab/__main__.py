"""`python -m clip_lab <job>`: fit / validate / test through LightningCLI; every other job a module with main(argv)."""

from __future__ import annotations

import ast
import logging
import re
import sys
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path

from clip_lab.errors import ClipLabError
from clip_lab.files import config_file

# jobs beside LightningCLI's, each a module with main(argv)
JOBS = {
    "demo": "clip_lab.jobs.demo",
    "bench": "clip_lab.jobs.bench",
    "sweep": "clip_lab.jobs.sweep",
    "report": "clip_lab.report.report",
    "zeroshot": "clip_lab.jobs.zeroshot",
    "search": "clip_lab.jobs.search",
    "figures": "clip_lab.report.figures",
    "baselines": "clip_lab.jobs.baselines",
    "embed": "clip_lab.jobs.embed",
    "prepare": "clip_lab.jobs.prepare",
    "serve": "clip_lab.jobs.serve",
}
LIGHTNING_JOBS = {  # LightningCLI's subcommands (its `predict` has no meaning here: `embed` writes embeddings)
    "fit": "train a model: config, CSV log and checkpoints (best.ckpt, last.ckpt) in results/<run>/",
    "validate": "validation recall of a fitted run (its best.ckpt unless --ckpt_path)",
    "test": "test recall of a fitted run into results/<run>/test_metrics.json (its best.ckpt unless --ckpt_path)",
}


class StderrHandler(logging.StreamHandler):
    """Logs to whatever `sys.stderr` is when a record is written (tests and notebooks replace it)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def describe(module: str) -> str:
    """A job's one-line description: the first line of its module's docstring, less the `python -m clip_lab <job>`:
    it starts with. Read from the file, not imported, so `--help` answers at once."""
    source = Path(find_spec(module).origin).read_text(encoding="utf-8")
    lines = (ast.get_docstring(ast.parse(source)) or "").strip().splitlines()
    return re.sub(r"^`python -m clip_lab \w+`:\s*", "", lines[0]).rstrip(".") if lines else ""


def usage() -> str:
    """`python -m clip_lab --help`: every job with one line each."""
    jobs = {**LIGHTNING_JOBS, **{name: describe(module) for name, module in JOBS.items()}}
    width = max(map(len, jobs)) + 2
    return "\n".join(
        [
            "usage: python -m clip_lab <job> [options]",
            "",
            "jobs:",
            *(f"  {name:<{width}}{text}" for name, text in jobs.items()),
            "",
            "python -m clip_lab <job> --help lists the options of a job. fit, validate and test read their",
            "settings from -c CONFIG.yaml files (configs/coco.yaml, configs/demo.yaml, or a fitted run's",
            "results/<run>/config.yaml).",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2  # no job at all is a mistake, if a gentle one
    argv = [config_file(a) if i and argv[i - 1] in ("-c", "--config") else a for i, a in enumerate(argv)]
    logger = logging.getLogger("clip_lab")
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):  # main() may run many times in one process
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        if argv and argv[0] in JOBS:
            import_module(JOBS[argv[0]]).main(argv[1:])
        elif argv and not argv[0].startswith("-") and argv[0] not in LIGHTNING_JOBS:
            hint = "; embeddings of a split, images or texts: python -m clip_lab embed" if argv[0] == "predict" else ""
            raise ClipLabError(f"unknown job {argv[0]!r}: use one of {', '.join((*LIGHTNING_JOBS, *JOBS))}{hint}")
        else:
            from clip_lab.train.cli import main as cli_main

            cli_main(argv)
    except ClipLabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def entry() -> None:
    """The `clip-lab` console script."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
