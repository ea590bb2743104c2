"""The command lines `figures` and `report` print for what is missing, built from the run's own resolved config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

BASE_CONFIG = "configs/coco.yaml"
# the lab's text -> image query and zero-shot classes; on the generated demo data, words its vocabulary has (the
# lab's would all be unknown there: a tie for every image, a ranking that says nothing)
EXAMPLES = {
    "lab": ("sport", ("person", "animal", "landscape")),
    "demo": ("a red circle", ("circle", "square", "triangle", "diamond", "cross")),
}


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's resolved `config.yaml` (what `fit` saved), or None when there is none or it is unreadable."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


class RunCommands:
    """Commands that produce each input of a run's figures and report, working as printed for that run.

    Once the run exists every command takes its own `config.yaml` (dataset, splits, caches, text model and any
    overlays it was fitted with are all in it) and its best checkpoint; before that, the base config.
    """

    def __init__(self, results_dir: str | Path, run: str) -> None:
        self.results_dir, self.run = str(results_dir), run
        self.run_dir = Path(results_dir) / run
        self.config = read_config(self.run_dir)
        self.config_file = self.run_dir / "config.yaml"
        self.ckpt = self.run_dir / "checkpoints" / "best.ckpt"
        self._rd = "" if self.results_dir == "results" else f" --results_dir {self.results_dir}"
        self._configs = f"-c {self.config_file}" if self.config else f"-c {BASE_CONFIG}"

    @property
    def data(self) -> dict[str, Any]:
        return (self.config or {}).get("data") or {}

    @property
    def examples(self) -> tuple[str, tuple[str, ...]]:
        """(a text query, zero-shot classes) that mean something for this run's data."""
        try:
            generated = json.loads((self.run_dir / "run_stats.json").read_text())["data"]["generated"]
        except (OSError, ValueError, KeyError, TypeError):
            generated = False
        return EXAMPLES["demo" if generated else "lab"]

    @property
    def test_split(self) -> str:
        return self.data.get("test_split") or "val2014"

    @property
    def fit(self) -> str:
        return f"python -m clip_lab fit -c {BASE_CONFIG} --run {self.run}{self._rd}"

    @property
    def test(self) -> str:
        test = f"python -m clip_lab test -c {self.config_file} --ckpt_path {self.ckpt}"
        return test if self.config else f"{self.fit} && {test}"

    def _after_fit(self, command: str) -> str:
        """`command` as is for a fitted run; preceded by the fit for a run that does not exist yet."""
        return command if self.ckpt.is_file() or self.config else f"{self.fit} && {command}"

    def sweep(self, name: str) -> str:
        return f"python -m clip_lab sweep {self._configs} --seeds 3 --run {name}{self._rd}"

    def baselines(self, name: str) -> str:
        return f"python -m clip_lab baselines {self._configs} --run {name}{self._rd}"

    @property
    def search(self) -> str:
        return self._after_fit(f'python -m clip_lab search --ckpt_path {self.ckpt} --text "{self.examples[0]}" --k 5')

    @property
    def zeroshot(self) -> str:
        return self._after_fit(
            f"python -m clip_lab zeroshot --ckpt_path {self.ckpt} --images {self.test_split} "
            f"--classes {' '.join(self.examples[1])}"
        )
