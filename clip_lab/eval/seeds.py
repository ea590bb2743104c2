"""Test metrics over seeds: each metric's mean and std per variant, and its difference to a base variant."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from clip_lab.eval.metrics import TABLE_KEYS


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(
    results: dict[str, list[dict[str, float]]], base: str = "baseline", exact: Sequence[str] = ()
) -> dict[str, Any]:
    """Per variant (its test metrics, one dict per seed): each metric's values, mean and std over seeds, and its
    difference to the `base` variant's. Variants in `exact` have no seed (a pretrained model evaluated once): their
    spread is zero, not unknown."""
    out: dict[str, Any] = {}
    for variant, seeds in results.items():
        metrics = {}
        for key in TABLE_KEYS:
            values = [r[key] for r in seeds]
            mean, std = mean_std(values)
            std = 0.0 if variant in exact else std
            metrics[key] = {"values": values, "mean": mean, "std": std}
        out[variant] = {"metrics": metrics}
    if base in out:
        base_metrics = out[base]["metrics"]
        for variant in out:
            comparison = {}
            for key in TABLE_KEYS:
                b, v = base_metrics[key], out[variant]["metrics"][key]
                se = math.sqrt(b["std"] ** 2 / len(b["values"]) + v["std"] ** 2 / len(v["values"]))
                diff = v["mean"] - b["mean"]
                comparison[key] = {
                    "diff": diff,
                    "se": se,
                    "beyond_spread": None if math.isnan(se) else bool(abs(diff) > 2 * se),
                }
            out[variant]["vs_baseline"] = comparison
    return out
