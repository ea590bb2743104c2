"""`python -m clip_lab demo`: it replaces only its own fit and test outputs in results/demo/, and its console says what
a student needs (the best checkpoint, the next command, a compact recall table) without Lightning's noise."""

import csv
import json
import logging

import pytest
import torch

from clip_lab.__main__ import main
from clip_lab.jobs.demo import RUN_OUTPUTS, clear_run


def test_clear_run_removes_the_fit_and_test_outputs_and_keeps_the_rest(tmp_path):
    run = tmp_path / "demo"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"old")
    for name in ("config.yaml", "metrics.csv", "test_metrics.json", "notes.md"):
        (run / name).write_text("old")
    (run / "search").mkdir()
    (run / "search" / "text-a-red-circle_val2014.json").write_text("{}")
    assert clear_run(run) == ["notes.md", "search"]
    assert sorted(p.name for p in run.iterdir()) == ["notes.md", "search"]
    assert (run / "search" / "text-a-red-circle_val2014.json").read_text() == "{}"
    assert clear_run(tmp_path / "none") == [] and "checkpoints" in RUN_OUTPUTS


@pytest.mark.slow
def test_demo_keeps_other_outputs_and_tells_the_student_what_came_out(tmp_path, monkeypatch, capfd, caplog):
    monkeypatch.chdir(tmp_path)  # the demo's caches and results go under the working directory
    run = tmp_path / "results" / "demo"
    (run / "search").mkdir(parents=True)
    (run / "search" / "mine.json").write_text('{"mine": true}')
    (run / "notes.md").write_text("my notes")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "old.ckpt").write_bytes(b"an earlier demo's")
    (run / "config.yaml").write_text("an earlier demo's")
    argv = ["demo", "--data", "cache/demo_coco", "--n_train", "128", "--n_val", "64", "--max_epochs", "1"]
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    out, err = capfd.readouterr()
    logged = [r.getMessage() for r in caplog.records]  # Lightning's lines too (its handler's stream is pytest's)

    assert (run / "search" / "mine.json").read_text() == '{"mine": true}' and (
        run / "notes.md"
    ).read_text() == "my notes"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert "demo: replacing the earlier demo run in results/demo; kept there: notes.md, search" in logged
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (
        "optimizer_states" not in best
        and "optimizer_states" in last
        and best["state_dict"].keys() == last["state_dict"].keys()
    )

    # fit ends with its best checkpoint, the validation R-sum that chose it, and the command to run next
    rsum = max(float(r["val/rsum"]) for r in csv.DictReader((run / "metrics.csv").open()) if r.get("val/rsum"))
    assert f"fit done: best checkpoint results/demo/checkpoints/best.ckpt (epoch 0, val/rsum {rsum:.3f})" in out
    assert "next, test it: python -m clip_lab test -c results/demo/config.yaml\n" in out
    # test says where it wrote and prints recall at three decimals, not Lightning's table of every logged value
    m = json.loads((run / "test_metrics.json").read_text())["metrics"]
    assert "results in results/demo/test_metrics.json" in out and "64 images, 320 captions" in out
    assert f"i2t   {m['i2t_R@1']:>8.3f}{m['i2t_R@5']:>8.3f}{m['i2t_R@10']:>8.3f}" in out
    assert f"rsum  {m['rsum']:>8.3f}" in out
    everything = "\n".join([out, err, *logged])
    for noise in ("test/first_caption/i2t_MRR", "TPU available", "litlogger", "FLOPs", "estimate number of stepping"):
        assert noise not in everything, noise
    # the device line stays (it says what trained the model), on a CPU machine and on a GPU one
    assert any(line.startswith("GPU available: ") for line in logged) and "trainable and 0 frozen parameters" in out
