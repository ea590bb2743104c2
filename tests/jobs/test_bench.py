"""`python -m clip_lab bench --small` runs every part end to end on the CPU and writes its JSON and Markdown tables."""

import json

import pytest

from clip_lab.__main__ import main
from clip_lab.jobs import bench


@pytest.mark.slow
def test_small_bench_writes_the_whole_table(tmp_path, capsys):
    out = tmp_path / "bench" / "cpu.json"
    assert main(["bench", "--small", "--root", str(tmp_path / "data"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for part in ("ceiling", "loader", "fit", "naive"):
        assert result[part]["images_per_s"] > 0
    assert result["fit"]["timed_images"] == 256 // 32 * 32  # one timed epoch after the warm-up one
    assert result["fit"]["test_images"] == 128 and result["fit"]["test_captions"] == 640
    assert result["fit"]["final_train_loss"] > 0
    assert result["caption_cache"]["captions"] == 3000 and result["caption_cache"]["captions_per_s"] > 0
    assert result["image_cache"]["images"] == 256 and result["image_cache"]["images_per_s"] > 0
    assert result["retrieval"]["images"] == 500 and 0 <= result["retrieval"]["t2i_R@1"] <= 1
    assert result["features"]["images"] == 256 and result["features"]["images_per_s"] > 0
    for head in ("linear", "mlp"):  # a known linear map: the heads start learning it (chance R-sum is 0.064)
        assert result["heads"][head]["seconds_per_epoch"] > 0 and result["heads"][head]["val_rsum"] > 0.2
    assert result["command"].startswith("python -m clip_lab bench --small")
    md = out.with_suffix(".md").read_text()
    assert md.count("\n| ") == 13  # header, rule, 11 measures
    printed = capsys.readouterr().out
    assert "end-to-end fit" in printed and "x ceiling" in printed and "fit is" in printed
    assert sorted(p.name for p in out.parent.iterdir()) == ["cpu.json", "cpu.md"]  # nothing half-written beside


@pytest.mark.slow
def test_text_part_times_the_step_with_each_text_side(tmp_path):
    results = bench.main(["--small", "--only", "text", "--root", str(tmp_path), "--out", str(tmp_path / "b.json")])
    assert set(results["text"]) == {"cached", "lstm", "distilbert"}
    assert all(r["images_per_s"] > 0 and r["steps"] == 3 for r in results["text"].values())
    rows = [a for a, _, _ in bench.table(results)]
    assert [r for r in rows if r.startswith("training step, text side")] == rows and len(rows) == 3
