"""The lab's whole flow on the official Flickr8k layout (tests/formats.py): fit, test, zeroshot, search, figures and
report describe that run and that data, show its real pictures, and every command the report suggests works as
printed."""

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from cli_args import TINY_IMAGES, fit_args, job_args
from formats import write_flickr8k

from clip_lab.__main__ import main
from clip_lab.report import figures, report


@pytest.fixture(scope="module")
def flickr(tmp_path_factory, text_model):
    """A Flickr8k run `fl` fitted (2 epochs, batch 4) and tested, with a zero-shot result and a text query."""
    tmp = tmp_path_factory.mktemp("flickr")
    root = tmp / "flickr8k"
    expected = write_flickr8k(root)
    results = tmp / "results"
    options = {"data.text_model": text_model, **TINY_IMAGES, "data.batch_size": 4, "trainer.max_epochs": 2}
    assert main(fit_args(root, tmp, "fl", "datasets/flickr8k.yaml", **options)) == 0
    run = results / "fl"
    assert main(job_args("test", run)) == 0  # its best checkpoint, found by itself
    ckpt = str(run / "checkpoints" / "best.ckpt")
    assert main(["zeroshot", "--ckpt_path", ckpt, "--images", "test", "--classes", "red", "green", "blue"]) == 0
    assert main(["search", "--ckpt_path", ckpt, "--text", "a red circle", "--k", "3"]) == 0
    return {"tmp": tmp, "root": root, "results": results, "run": run, "expected": expected}


def run_report(flickr, *extra):
    out = flickr["tmp"] / "report" / "fl" / "report.md"
    result = report.main(
        ["--results_dir", str(flickr["results"]), "--run", "fl", "--out", str(out), "--no_pdf", *extra]
    )
    return out, result


def test_figures_show_the_datasets_own_pictures(flickr, tmp_path):
    manifest = figures.main(["--results_dir", str(flickr["results"]), "--run", "fl", "--out", str(tmp_path)])
    drawn = {"search_a-red-circle_flickr8k_test", "zeroshot_test_red-green-blue", "i2t_examples", "similarity"}
    assert drawn <= set(manifest)
    for name in drawn:
        assert "png" in manifest[name] and "images_not_found" not in manifest[name], (name, manifest[name])
        assert "could not be found" not in manifest[name]["caption"]
    # each result names its picture through the split's records: the file itself, under the dataset's image folder
    rows = json.loads((flickr["run"] / "search" / "text-a-red-circle_flickr8k_test.json").read_text())["results"]
    images = flickr["root"] / "Flicker8k_Dataset"
    for r in rows:
        assert Path(r["file"]) == images / r["file_name"] and figures.thumbnail(r) is not None


def test_a_picture_gone_comes_from_the_image_cache_and_one_gone_there_too_is_named(flickr, tmp_path, caplog):
    results = flickr["results"]
    rows = json.loads((flickr["run"] / "search" / "text-a-red-circle_flickr8k_test.json").read_text())["results"]
    from_file = figures.thumbnail(rows[0])
    gone = dict(rows[0], file=str(tmp_path / "moved.jpg"))
    from_cache = figures.thumbnail(gone)  # the cache holds the central square the model saw
    assert from_cache is not None and from_cache.shape == from_file.shape
    assert np.abs(from_cache.astype(int) - from_file.astype(int)).mean() < 12  # same picture, another resampling
    assert figures.thumbnail(dict(gone, image_cache=str(tmp_path / "none.npy"))) is None

    # a result whose pictures can be found nowhere: a grey square that the caption, manifest and a warning name
    search = results / "fl" / "search"
    broken = [dict(r, file=str(tmp_path / f"gone{k}.jpg"), image_cache=None) for k, r in enumerate(rows)]
    query = json.loads((search / "text-a-red-circle_flickr8k_test.json").read_text()) | {"results": broken}
    (search / "text-gone_flickr8k_test.json").write_text(json.dumps(query))
    try:
        manifest = figures.main(["--results_dir", str(results), "--run", "fl", "--out", str(tmp_path / "f")])
    finally:
        (search / "text-gone_flickr8k_test.json").unlink()
    entry = manifest["search_gone_flickr8k_test"]
    assert entry["images_not_found"] == [r["file"] for r in broken]
    assert f"{len(rows)} of its pictures could not be found" in entry["caption"]
    assert any("pictures could not be found" in r.message for r in caplog.records)


def test_the_report_describes_this_run_and_its_data(flickr):
    out, result = run_report(flickr)
    text = out.read_text()
    assert text.startswith("<!-- BEGIN GENERATED: title")
    assert "# Fine-tuning CLIP: image–text retrieval on Flickr8k (run `fl`)" in text and "COCO" not in text
    methodology = result["blocks"]["methodology"]
    train, _ = flickr["expected"].of("train")
    captioned = sum(1 for _, _, caps in train if caps)
    assert f"train on train ({captioned:,} images with captions)" in methodology
    assert "validate on 3 images of val, test on test" in methodology
    tested = result["blocks"]["test_results"]
    assert "Not the published gallery" in tested and "the test split has 4 images, not the 1,000" in tested
    assert "unreadable" not in tested
    zeroshot = result["blocks"]["zeroshot"]
    assert "`red`, `green`, `blue`" in zeroshot and "no ground truth" in zeroshot.lower()
    assert (
        '"a red circle"' in result["blocks"]["query"]
        and "search_a-red-circle_flickr8k_test" in result["blocks"]["query"]
    )


def test_every_command_the_report_suggests_works_as_printed(flickr, monkeypatch):
    _, result = run_report(flickr)
    printed = [
        line.removeprefix("> ").strip()
        for b in result["blocks"].values()
        for line in b.splitlines()
        if line.startswith("> python -m clip_lab ")
    ]
    jobs = {shlex.split(c)[3] for c in printed}
    assert jobs == {"baselines", "sweep"}, printed  # what this run still lacks
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the commands are relative to the repository
    for command in printed:
        argv = shlex.split(command)[3:]
        if argv[0] == "sweep":  # as printed, trimmed to one variant and seed to keep the test short
            argv += ["--variants", "baseline", "--seeds", "1"]
        assert main(argv) == 0, command
    _, again = run_report(flickr, "--ablations", "ablations")
    assert "**Missing:**" not in again["blocks"]["baselines"] + again["blocks"]["ablations"]
    assert "another gallery" not in again["blocks"]["baselines"]  # the baselines are of this run's data
    assert "Every sweep run shares the settings of run `fl`, apart from" in again["blocks"]["ablations"]


def test_a_report_of_another_run_is_its_own_file_and_reusing_a_file_says_so(flickr, caplog):
    out, _ = run_report(flickr)
    other = report.main(
        [
            "--results_dir",
            str(flickr["results"]),
            "--run",
            "nothing_yet",
            "--no_pdf",
            "--out",
            str(flickr["tmp"] / "report" / "nothing_yet" / "report.md"),
        ]
    )
    assert "(run `nothing_yet`)" in Path(other["report"]).read_text() and "(run `fl`)" in out.read_text()
    assert any(
        "no run 'nothing_yet'" in r.message
        and "fl" in r.message.split("runs there: ")[1].rstrip(")").split(")")[0].split(", ")
        for r in caplog.records
    )
    assert (out.parent / "figures" / "zeroshot_test_red-green-blue.png").is_file()
    assert (out.parent / "tables" / "test_recall.tex").is_file()
    report.main(["--results_dir", str(flickr["results"]), "--run", "nothing_yet", "--out", str(out), "--no_pdf"])
    assert "(run `nothing_yet`)" in out.read_text()
    assert any("was about run fl" in r.message for r in caplog.records)
    # nothing of run fl is left beside it for whoever copies the folder: figures and tables describe this run only
    assert not (out.parent / "figures" / "zeroshot_test_red-green-blue.png").exists()
    assert not (out.parent / "tables" / "test_recall.tex").exists()
