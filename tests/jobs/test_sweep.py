"""The ablation sweep: known means, spreads and verdicts from hand-made results; a real 2-seed sweep on the demo."""

import json
import logging
import math
from pathlib import Path

import pytest
from cli_args import data_options, flags

from clip_lab.__main__ import main
from clip_lab.eval.metrics import TABLE_KEYS as METRICS
from clip_lab.eval.seeds import summarize
from clip_lab.files import CONFIGS
from clip_lab.jobs.sweep import overlays
from clip_lab.report.tables import sweep_markdown as markdown


def fake_metrics(rsum):
    return {k: rsum / 6 for k in METRICS} | {"rsum": rsum}


def test_summary_means_spreads_and_verdicts():
    runs = {
        "baseline": [fake_metrics(r) for r in (3.0, 3.2, 3.4)],
        "better": [fake_metrics(r) for r in (4.0, 4.1, 4.2)],
        "noise": [fake_metrics(r) for r in (3.1, 3.3, 3.5)],
    }
    s = summarize(runs)
    base = s["baseline"]["metrics"]["rsum"]
    assert base["mean"] == pytest.approx(3.2) and base["std"] == pytest.approx(0.2)
    better = s["better"]["vs_baseline"]["rsum"]
    assert better["diff"] == pytest.approx(0.9)
    assert better["se"] == pytest.approx(math.sqrt(0.2**2 / 3 + 0.1**2 / 3))
    assert better["beyond_spread"] is True and s["noise"]["vs_baseline"]["rsum"]["beyond_spread"] is False
    table = markdown(s, [0, 1, 2])
    assert "| better | " in table and "**yes**" in table and "| noise |" in table
    assert "320.0 ± 20.0" in table  # rsum in %, mean ± std
    single = summarize({"baseline": runs["baseline"][:1], "better": runs["better"][:1]})
    assert single["better"]["vs_baseline"]["rsum"]["beyond_spread"] is None
    assert "n/a (one seed)" in markdown(single, [0])


def test_variants_are_overlay_files_and_unknown_names_are_refused(capsys):
    assert overlays("baseline") == []
    assert [p.name for p in overlays("bn_head+augment")] == ["bn_head.yaml", "augment.yaml"]
    assert main(["sweep", "--variants", "bn_head", "dropout"]) == 2
    err = capsys.readouterr().err
    assert "no dropout.yaml" in err and "bn_head" in err


@pytest.mark.slow
def test_two_seed_sweep_on_the_demo_runs_end_to_end_and_resumes(demo_root, tmp_path):
    results = tmp_path / "results"
    argv = [
        "sweep",
        "-c",
        str(CONFIGS / "coco.yaml"),
        "-c",
        str(CONFIGS / "demo.yaml"),
        "--variants",
        "baseline",
        "bn_head",
        "--seeds",
        "2",
        "--results_dir",
        str(results),
        "--",
        *flags(**data_options(demo_root, tmp_path), trainer__max_epochs=2, data__batch_size=32, data__val_images=48),
    ]
    assert main(argv) == 0
    summary = json.loads((results / "ablations.json").read_text())
    assert summary["seeds"] == [0, 1] and set(summary["variants"]) == {"baseline", "bn_head"}
    bn = summary["variants"]["bn_head"]
    assert len(bn["metrics"]["rsum"]["values"]) == 2 and "vs_baseline" in bn
    config = (results / "ablations" / "bn_head" / "seed1" / "config.yaml").read_text()
    assert "head_norm: batch" in config and "seed_everything: 1" in config
    for run in bn["runs"]:
        m = json.loads((Path(run) / "test_metrics.json").read_text())["metrics"]
        assert m["n_images"] == 96
    table = (results / "ablations.md").read_text()
    assert "| baseline |" in table and "| bn_head |" in table and " ± " in table
    stamp = (results / "ablations" / "baseline" / "seed0" / "test_metrics.json").stat().st_mtime_ns
    assert main(argv) == 0  # everything done: reused, not retrained
    assert (results / "ablations" / "baseline" / "seed0" / "test_metrics.json").stat().st_mtime_ns == stamp


def test_the_sweep_says_which_run_of_how_many_it_is_on_and_takes_the_old_name_option(tmp_path, monkeypatch, caplog):
    """fit and test stood in for by a stub that writes a test result: the sweep's own bookkeeping, in seconds."""
    from clip_lab import options
    from clip_lab.jobs import sweep

    calls = []

    def fake_cli(argv):
        calls.append(argv[0])
        if argv[0] == "test":
            run_dir = Path(argv[argv.index("-c") + 1]).parent
            run_dir.mkdir(parents=True, exist_ok=True)
            result = {"protocol": {"name": "val2014"}, "metrics": fake_metrics(0.3)}
            (run_dir / "test_metrics.json").write_text(json.dumps(result))

    monkeypatch.setattr(sweep.cli, "main", fake_cli)
    monkeypatch.setattr(options, "_warned", set())
    results = tmp_path / "results"
    argv = ["sweep", "--variants", "baseline", "bn_head", "--seeds", "2", "--results_dir", str(results)]
    with caplog.at_level(logging.INFO, logger="clip_lab"):
        assert main([*argv, "--name", "abl"]) == 0
    said = [r.getMessage() for r in caplog.records]
    assert "--name is deprecated: use --run (the old spelling goes in the next release)" in said
    steps = [m for m in said if m.startswith("sweep run ")]
    assert steps == [
        f"sweep run {i} of 4: {v} seed {s} -> {results / 'abl' / v / f'seed{s}'}"
        for i, (v, s) in enumerate([("baseline", 0), ("baseline", 1), ("bn_head", 0), ("bn_head", 1)], 1)
    ]
    assert calls == ["fit", "test"] * 4 and (results / "abl.json").is_file() and (results / "abl.md").is_file()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clip_lab"):
        assert main([*argv, "--run", "abl"]) == 0  # the same sweep: every run is reused
    reused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sweep run ")]
    first = results / "abl" / "baseline" / "seed0"
    assert reused[0] == f"sweep run 1 of 4: baseline seed 0 done already, reusing {first}"
    assert len(reused) == 4 and calls == ["fit", "test"] * 4
