"""The report: every block filled from results/ or naming the command that fills it; the student's text survives."""

import json
import shutil

from clip_lab.report import main

REPORT_ARGS = ["--no_figures"]  # figures have their own tests; here the report reads their manifest


def test_empty_results_give_a_report_that_names_each_missing_command(tmp_path):
    out = main(["--results_dir", str(tmp_path / "results"), "--out", str(tmp_path / "report" / "report.md"),
                *REPORT_ARGS])
    text = (tmp_path / "report" / "report.md").read_text()
    assert out["missing"] == 7
    assert "python -m clip_lab baselines -c configs/coco.yaml --name baselines" in text
    assert "python -m clip_lab fit -c configs/coco.yaml --run baseline" in text
    assert "python -m clip_lab sweep -c configs/coco.yaml --seeds 3 --name ablations" in text
    assert "python -m clip_lab figures" in text
    for section in ("## 1. Introduction", "## 2. Methodology", "## 3. Results", "## 4. Discussion",
                    "## 5. Conclusion", "## Appendix", "## Reflection on the use of LLMs"):
        assert section in text


def fake_sweep(results, trained_run):
    """A two-variant sweep summary pointing at copies of the fixture's run."""
    runs = {}
    for variant, rsum in (("baseline", (2.0, 2.2)), ("bn_head", (2.6, 2.8))):
        runs[variant] = []
        for seed, value in enumerate(rsum):
            run = results / "ablations" / variant / f"seed{seed}"
            shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints"))
            m = json.loads((run / "test_metrics.json").read_text())
            m["metrics"]["rsum"] = value
            (run / "test_metrics.json").write_text(json.dumps(m))
            runs[variant].append(run)
    from clip_lab.sweep import summarize

    summary = summarize({v: [json.loads((d / "test_metrics.json").read_text())["metrics"] for d in dirs]
                         for v, dirs in runs.items()})
    for variant, dirs in runs.items():
        summary[variant]["runs"] = [str(d) for d in dirs]
    (results / "ablations.json").write_text(json.dumps({"seeds": [0, 1], "order": ["baseline", "bn_head"],
                                                        "variants": summary}))


def test_report_fills_tables_from_runs_and_keeps_the_students_text(trained_run, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(trained_run, results / "t")
    fake_sweep(results, trained_run)
    report = tmp_path / "report" / "report.md"
    args = ["--results_dir", str(results), "--run", "t", "--out", str(report), *REPORT_ARGS]
    main(args)
    text = report.read_text()
    metrics = json.loads((results / "t" / "test_metrics.json").read_text())
    std, first = metrics["metrics"], metrics["first_caption"]["metrics"]
    assert f"| image → text R@1 | {100 * std['i2t_R@1']:.1f} | {100 * first['i2t_R@1']:.1f} |" in text
    assert "torchvision `resnet18`" in text and "symmetric InfoNCE" in text
    assert "| bn_head |" in text and "| +60.0 (" in text  # Δ R-sum 2.7 - 2.1 in %, then 2 SE
    assert "| t | 1 x " in text  # the training-time table read run_stats.json
    for table in ("test_recall", "ablations", "training_time"):
        latex = (tmp_path / "report" / "tables" / f"{table}.tex").read_text()
        assert r"\begin{tabular}" in latex and r"\bottomrule" in latex

    # the student writes, results change, the report is regenerated
    mine = "We trained on the demo data; the numbers below surprised us."
    text = text.replace("## 1. Introduction\n\n", f"## 1. Introduction\n\n{mine}\n\n", 1)
    text = text.replace("## 4. Discussion\n\n", "## 4. Discussion\n\nBN helps, within noise.\n\n", 1)
    report.write_text(text)
    metrics["metrics"]["i2t_R@1"] = 0.987
    (results / "t" / "test_metrics.json").write_text(json.dumps(metrics))
    main(args)
    again = report.read_text()
    assert mine in again and "BN helps, within noise." in again
    assert "| image → text R@1 | 98.7 |" in again
    assert again.count("<!-- BEGIN GENERATED: test_results") == 1
