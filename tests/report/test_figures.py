"""`python -m clip_lab figures` on a real fitted and tested run (plus its search and zero-shot outputs) and a hand-made
sweep: every figure written as PNG and PDF with a caption; missing inputs become entries naming their command."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from clip_lab.__main__ import main
from clip_lab.eval.metrics import TABLE_KEYS as METRICS
from clip_lab.eval.seeds import summarize
from clip_lab.jobs import search, zeroshot
from clip_lab.report import figures

VARIANTS = {"baseline": 0.30, "bn_head": 0.35}  # a variant's recall level (each seed a little off it)
SHAPES = ["circle", "square", "triangle", "diamond", "cross"]


def fake_metrics_csv(path, train, val, steps_per_epoch=1):
    """A CSVLogger file: train and val rows apart, the other's cells blank; train logged `steps_per_epoch` times."""
    lines = ["epoch,step,train/loss,val/loss,val/rsum"]
    for e, (t, v) in enumerate(zip(train, val)):
        lines.append(f"{e},{10 * e},,{v},1.0")
        lines += [f"{e},{10 * e + s},{t + 0.1 * (s - (steps_per_epoch - 1) / 2)},," for s in range(steps_per_epoch)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def fake_sweep(results, name="abl"):
    """results/<name>/<variant>/seed<k>/ with a metrics.csv and test_metrics.json each, and the sweep's summary."""
    runs = {}
    for v, level in VARIANTS.items():
        for seed in (0, 1):
            run = results / name / v / f"seed{seed}"
            fake_metrics_csv(run / "metrics.csv", [3.0 - level, 2.5 - level, 2.2 - level], [2.4, 2.1, 2.0])
            metrics = {k: level + 0.02 * seed for k in METRICS}
            (run / "test_metrics.json").write_text(json.dumps({"metrics": metrics}))
            runs.setdefault(v, []).append(run)
    summary = summarize(
        {v: [json.loads((d / "test_metrics.json").read_text())["metrics"] for d in dirs] for v, dirs in runs.items()}
    )
    (results / f"{name}.json").write_text(
        json.dumps(
            {
                "seeds": [0, 1],
                "variants": {v: {"overlays": [], "runs": [str(d) for d in runs[v]], **summary[v]} for v in runs},
            }
        )
    )


@pytest.fixture(scope="module")
def results(trained_run, tmp_path_factory):
    """results/ with run t (the trained run's log and test outputs, one text query, one zero-shot run) and sweep abl."""
    results = tmp_path_factory.mktemp("figures") / "results"
    run = results / "t"
    run.mkdir(parents=True)
    for name in ("metrics.csv", "config.yaml", "test_examples.json", "test_embeddings.pt"):
        shutil.copy(trained_run / name, run / name)
    ckpt = str(trained_run / "checkpoints" / "best.ckpt")
    search.main(
        [
            "--ckpt_path",
            ckpt,
            "--text",
            "a red circle",
            "--k",
            "5",
            "--out",
            str(run / "search" / "text-a-red-circle_val2014.json"),
        ]
    )
    zeroshot.main(
        [
            "--ckpt_path",
            ckpt,
            "--images",
            "val2014",
            "--classes",
            *SHAPES,
            "--out",
            str(run / "zeroshot" / "val2014.json"),
        ]
    )
    fake_sweep(results)
    return results


def test_every_figure_is_written_as_png_and_pdf_with_a_caption(results, tmp_path, capsys):
    out = tmp_path / "figures"
    manifest = figures.main(["--results_dir", str(results), "--run", "t", "--ablations", "abl", "--out", str(out)])
    assert set(manifest) == {
        "loss",
        "recall_ablations",
        "search_a-red-circle_val2014",
        "i2t_examples",
        "zeroshot_val2014",
        "similarity",
        "embeddings_pca",
    }
    for name, entry in manifest.items():
        assert "missing" not in entry and entry["caption"].endswith("."), (name, entry)
        with Image.open(entry["png"]) as png:
            assert png.format == "PNG" and png.width >= 700 and png.height >= 300, (name, png.size)
            assert png.info["dpi"][0] == pytest.approx(figures.DPI, abs=1)
        assert entry["pdf"] == str(out / f"{name}.pdf") and (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    assert json.loads((out / "figures.json").read_text()) == manifest
    assert not list(out.glob(".*"))  # no temporary file left behind
    assert "a red circle" in manifest["search_a-red-circle_val2014"]["caption"]
    assert "bn_head has the highest rsum" in manifest["recall_ablations"]["caption"]
    printed = capsys.readouterr().out
    assert printed.count("(+ .pdf)") == 7 and "MISSING" not in printed


def test_missing_inputs_are_entries_naming_their_command(tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["figures", "--results_dir", str(tmp_path / "results"), "--run", "r", "--out", str(out)]) == 0
    manifest = json.loads((out / "figures.json").read_text())
    assert set(manifest) == {
        "loss",
        "recall_ablations",
        "search",
        "i2t_examples",
        "zeroshot",
        "similarity",
        "embeddings_pca",
    }
    assert all(
        set(e) == {"missing", "command"} and e["command"].startswith("python -m clip_lab ") for e in manifest.values()
    )
    assert "fit -c configs/coco.yaml --run r" in manifest["loss"]["command"]
    assert "sweep -c configs/coco.yaml --seeds 3 --run ablations" in manifest["recall_ablations"]["command"]
    assert (
        f"search --ckpt_path {tmp_path / 'results' / 'r' / 'checkpoints' / 'best.ckpt'}"
        in manifest["search"]["command"]
    )
    assert " test -c " in manifest["similarity"]["command"] and "zeroshot --ckpt" in manifest["zeroshot"]["command"]
    assert capsys.readouterr().out.count("MISSING") == 7
    assert not list(out.glob("*.png"))


def test_gone_images_are_named_and_broken_files_missing_entries(results, tmp_path, caplog):
    run = tmp_path / "results" / "t"
    run.mkdir(parents=True)
    examples = json.loads((results / "t" / "test_examples.json").read_text())
    for k, item in enumerate(examples["retrieval"] + examples["similarity"]["images"]):
        item["file"], item["image_cache"] = str(tmp_path / "gone" / f"x{k}.jpg"), None  # no file, no cache row
    (run / "test_examples.json").write_text(json.dumps(examples))
    (run / "zeroshot").mkdir()
    (run / "zeroshot" / "val2014.json").write_text("{not json")
    (run / "search").mkdir()
    (run / "search" / "text-sport_val2014.json").write_text(json.dumps({"query": {"text": "sport"}, "results": []}))
    manifest = figures.main(["--results_dir", str(tmp_path / "results"), "--run", "t", "--out", str(tmp_path / "f")])
    for name, items in (
        ("i2t_examples", examples["retrieval"][: figures.TEXT_ROWS]),
        ("similarity", examples["similarity"]["images"]),
    ):
        entry = manifest[name]  # drawn, but never silently: the grey squares are named
        assert "png" in entry and entry["images_not_found"] == [item["file"] for item in items]
        assert f"{len(items)} of its pictures could not be found" in entry["caption"]
    assert sum("pictures could not be found" in r.message for r in caplog.records) == 2
    zeroshot = manifest["zeroshot_val2014"]
    assert "unreadable" in zeroshot["missing"] and "zeroshot" in zeroshot["command"]
    assert "no results" in manifest["search_sport_val2014"]["missing"]
    assert "test_embeddings.pt does not exist" in manifest["embeddings_pca"]["missing"]


def test_epoch_curves_read_the_lightning_layout(tmp_path):
    path = tmp_path / "metrics.csv"
    fake_metrics_csv(path, [3.0, 2.0], [2.5, 1.5], steps_per_epoch=3)
    curves = figures.epoch_curves(path)
    assert curves["train"][0].tolist() == [1, 2] and np.allclose(curves["train"][1], [3.0, 2.0])  # step rows averaged
    assert curves["val"][0].tolist() == [1, 2] and np.allclose(curves["val"][1], [2.5, 1.5])


def test_pca_finds_the_direction_of_largest_spread():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(200, 8)) * np.array([10, 1, 0.1, 0, 0, 0, 0, 0]) + 5.0
    xy, explained = figures.pca_2d(points)
    assert xy.shape == (200, 2) and np.allclose(xy.mean(axis=0), 0, atol=1e-9)
    assert explained[0] == pytest.approx(100 * 100 / 101.01, abs=2.0) and explained[0] > explained[1]
    assert np.corrcoef(xy[:, 0], points[:, 0])[0, 1] ** 2 > 0.999


def test_a_search_figure_draws_at_most_its_first_results_and_says_so(tmp_path):
    from types import SimpleNamespace

    rows = [{"rank": i + 1, "score": 1 - i / 100, "image_id": i, "caption": "a red circle"} for i in range(40)]
    path = tmp_path / "search.json"
    path.write_text(json.dumps({"query": {"text": "a red circle"}, "results": rows, "split": "val2014"}))
    ctx = SimpleNamespace(thumb=lambda ref, label: None, commands=SimpleNamespace(search="search ..."))
    fig, caption = figures.search_figure(ctx, path)
    drawn = [ax for ax in fig.axes if ax.get_title()]
    assert len(drawn) == figures.FIGURE_RESULTS == 25 and drawn[-1].get_title().startswith("#25 ")
    assert "the first 25 of the 40 the search returned" in caption
    assert fig.get_size_inches()[1] < 15  # five rows of five, not eight
