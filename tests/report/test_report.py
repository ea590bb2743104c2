"""The report: every block filled from results/ or naming the command that fills it; the student's text survives."""

import json
import os
import shutil
import stat
import time

import pytest
import yaml

from clip_lab.jobs import search, zeroshot
from clip_lab.report.report import main

REPORT_ARGS = ["--no_figures"]  # figures have their own tests; here the report reads their manifest


def test_empty_results_give_a_report_that_names_each_missing_command(tmp_path):
    out = main(
        ["--results_dir", str(tmp_path / "results"), "--out", str(tmp_path / "report" / "report.md"), *REPORT_ARGS]
    )
    text = (tmp_path / "report" / "report.md").read_text()
    assert out["missing"] == 9  # every block but the title
    assert "python -m clip_lab baselines -c configs/coco.yaml --run baselines" in text
    assert "python -m clip_lab fit -c configs/coco.yaml --run baseline" in text
    assert "python -m clip_lab sweep -c configs/coco.yaml --seeds 3 --run ablations" in text
    assert "python -m clip_lab figures" in text
    for section in (
        "## 1. Introduction",
        "## 2. Methodology",
        "## 3. Results",
        "## 4. Discussion",
        "## 5. Conclusion",
        "## Appendix",
        "## Reflection on the use of LLMs",
    ):
        assert section in text


def fake_sweep(results, trained_run, epochs=None):
    """A two-variant sweep summary pointing at copies of the fixture's run (`epochs`: their trainer.max_epochs; bn_head
    runs with model.head_norm batch)."""
    runs = {}
    for variant, rsum in (("baseline", (2.0, 2.2)), ("bn_head", (2.6, 2.8))):
        runs[variant] = []
        for seed, value in enumerate(rsum):
            run = results / "ablations" / variant / f"seed{seed}"
            shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints"))
            config = yaml.safe_load((run / "config.yaml").read_text())
            config |= {"run": f"ablations/{variant}/seed{seed}", "seed_everything": seed}
            config["trainer"]["max_epochs"] = epochs or config["trainer"]["max_epochs"]
            config["model"]["head_norm"] = "batch" if variant == "bn_head" else None
            (run / "config.yaml").write_text(yaml.safe_dump(config))
            m = json.loads((run / "test_metrics.json").read_text())
            m["metrics"]["rsum"] = value
            (run / "test_metrics.json").write_text(json.dumps(m))
            runs[variant].append(run)
    from clip_lab.eval.seeds import summarize

    summary = summarize(
        {v: [json.loads((d / "test_metrics.json").read_text())["metrics"] for d in dirs] for v, dirs in runs.items()}
    )
    for variant, dirs in runs.items():
        summary[variant]["runs"] = [str(d) for d in dirs]
    (results / "ablations.json").write_text(
        json.dumps({"seeds": [0, 1], "order": ["baseline", "bn_head"], "variants": summary})
    )


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
    assert (
        "validate on 64 images of val2014 (a fixed seeded subset) — the checkpoint is chosen on images the test "
        "also evaluates" in text
    )  # the lab's COCO 2014 set-up has no third split: said, not hidden
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


def test_the_ablations_say_what_every_sweep_run_shares_and_how_it_differs_from_the_run(trained_run, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(trained_run, results / "t")
    fake_sweep(results, trained_run, epochs=4)  # the demo sweep's 4 epochs beside the run's 6
    out = main(["--results_dir", str(results), "--run", "t", "--out", str(tmp_path / "r.md"), *REPORT_ARGS])
    ablations = out["blocks"]["ablations"]
    assert "Every sweep run shares the settings of run `t`, except: `trainer.max_epochs` 4 (run `t`: 6)." in ablations
    assert "- bn_head: `model.head_norm` 'batch'" in ablations
    assert "seed" not in ablations.split("except:")[1].split(".")[0]  # seeds and names are not settings


@pytest.fixture(scope="module")
def lab_outputs(trained_run, tmp_path_factory):
    """results/t with two zero-shot results (the degenerate person/animal/landscape one written last) and a query."""
    results = tmp_path_factory.mktemp("lab") / "results"
    shutil.copytree(trained_run, results / "t")
    ckpt = str(results / "t" / "checkpoints" / "best.ckpt")
    zeroshot.main(
        ["--ckpt_path", ckpt, "--images", "val2014", "--classes", "circle", "square", "triangle", "diamond", "cross"]
    )
    time.sleep(0.05)  # distinct modification times: "newest" must not depend on the clock's resolution
    zeroshot.main(["--ckpt_path", ckpt, "--images", "val2014", "--classes", "person", "animal", "landscape"])
    search.main(["--ckpt_path", ckpt, "--text", "a red circle", "--k", "5"])
    return results


def test_zero_shot_and_the_query_have_their_own_sections(lab_outputs, tmp_path):
    args = ["--results_dir", str(lab_outputs), "--run", "t", "--out", str(tmp_path / "report.md"), "--no_pdf"]
    newest = main(args)["blocks"]["zeroshot"]
    assert "`person`, `animal`, `landscape`" in newest and "result file" in newest  # the newest by default
    assert "figures/zeroshot_val2014_person-animal-landscape.png" in newest
    # the demo's shapes know no person: accuracy and chance 0 say nothing, and the section says so
    assert "none of these images' true classes is among the classes" in newest and "Accuracy" not in newest
    shapes = main([*args, "--zeroshot", "val2014_circle-square-triangle-diamond-cross"])["blocks"]
    block = shapes["zeroshot"]
    result = json.loads(
        (lab_outputs / "t" / "zeroshot" / "val2014_circle-square-triangle-diamond-cross.json").read_text()
    )
    assert f"**Accuracy {100 * result['accuracy']:.1f} %** against a chance of {100 * result['chance']:.1f} %" in block
    # the confusion matrix, counted here from the predictions of the images with one shape
    single = [p for p in result["predictions"] if len(set(p["truth"])) == 1]
    circles = [p for p in single if p["truth"][0] == "circle"]
    hits = sum(p["predicted"] == "circle" for p in circles)
    cells = [sum(p["predicted"] == c for p in circles) for c in result["classes"]]
    row = f"| circle | {' | '.join(map(str, cells))} | 0 | {len(circles)} | {100 * hits / len(circles):.1f} |"
    assert row in block
    assert f"{len(result['predictions']) - len(single)} images show several of the classes" in block
    assert (tmp_path / "tables" / "zeroshot_confusion.tex").is_file()
    query = shapes["query"]
    found = json.loads((lab_outputs / "t" / "search" / "text-a-red-circle_val2014.json").read_text())
    assert 'Query **"a red circle"** against the 96 images of val2014' in query
    assert "figures/search_a-red-circle_val2014.png" in query
    for r in found["results"]:
        assert f"| {r['rank']} | {r['score']:.3f} | {r['image_id']} | {r['file_name']} |" in query
    assert "search_a-red-circle_val2014" not in shapes["figures"] and "loss.png" in shapes["figures"]
    assert "missing" in main([*args, "--zeroshot", "nothing"])["blocks"]["zeroshot"].lower()


def fake_tool(folder, name, script):
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_a_pdf_is_written_when_pandoc_and_an_engine_are_installed(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))  # no real pandoc: no PDF, and a line saying how to get one
    out = tmp_path / "report" / "report.md"
    args = ["--results_dir", str(tmp_path / "results"), "--run", "r", "--out", str(out), *REPORT_ARGS]
    assert main(args)["pdf"] is None and "no PDF written: install pandoc" in capsys.readouterr().out
    # a stand-in pandoc that writes its arguments as the PDF, and a stand-in engine
    fake_tool(bin_dir, "xelatex", "exit 0\n")
    fake_tool(bin_dir, "pandoc", 'for a; do last="$a"; done; echo "$@" > "$last"\n')
    result = main(args)
    assert result["pdf"] == str(out.with_suffix(".pdf"))
    called = out.with_suffix(".pdf").read_text()
    assert called.startswith("report.md --from gfm --pdf-engine xelatex")
    assert sorted(p.name for p in out.parent.iterdir() if p.is_file()) == ["report.md", "report.pdf"]
    # a failing conversion: a warning, the old PDF left as it was, nothing half-written
    fake_tool(bin_dir, "pandoc", 'echo "Error producing PDF. ! Undefined control sequence." >&2; exit 43\n')
    assert main(args)["pdf"] is None and out.with_suffix(".pdf").read_text() == called
    assert sorted(p.name for p in out.parent.iterdir() if p.is_file()) == ["report.md", "report.pdf"]


@pytest.mark.skipif(
    not (
        __import__("shutil").which("pandoc")
        and any(__import__("shutil").which(e) for e in ("xelatex", "lualatex", "weasyprint", "wkhtmltopdf", "pdflatex"))
    ),
    reason="pandoc and a PDF engine are not installed",
)
def test_a_real_pdf_of_a_real_report(trained_run, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(trained_run, results / "t")
    out = main(["--results_dir", str(results), "--run", "t", "--out", str(tmp_path / "report" / "report.md")])
    assert out["pdf"] and open(out["pdf"], "rb").read(5) == b"%PDF-" and os.path.getsize(out["pdf"]) > 10_000


def test_suggested_queries_and_classes_fit_the_runs_data(trained_run, tmp_path):
    from clip_lab.report.commands import RunCommands

    demo = RunCommands(trained_run.parent, trained_run.name)  # generated demo data: words its vocabulary has
    assert '--text "a red circle"' in demo.search and "--classes circle square triangle diamond cross" in demo.zeroshot
    other = RunCommands(tmp_path, "baseline")  # any other data: the lab's own query and classes
    assert '--text "sport"' in other.search and "--classes person animal landscape" in other.zeroshot
