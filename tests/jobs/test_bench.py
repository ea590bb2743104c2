"""`python -m clip_lab bench --small` runs every part end to end on the CPU and writes its JSON and Markdown tables."""

import json

import pytest
from cli_args import ckpt_of

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


def test_serve_part_times_real_requests_to_both_galleries(trained_run, tmp_path):
    out = tmp_path / "serve.json"
    sizes = ["--serve_requests", "12", "--serve_load_requests", "40"]
    argv = ["--small", "--only", "serve", "--ckpt_path", ckpt_of(trained_run), *sizes]
    results = bench.main([*argv, "--root", str(tmp_path / "data"), "--out", str(out)])
    serve = results["serve"]
    assert [g["name"] for g in serve["galleries"]] == ["demo", "synthetic"] and serve["skipped"] == []
    assert [g["images"] for g in serve["galleries"]] == [96, 2000]  # the run's val2014; --small's synthetic size
    for g in serve["galleries"]:
        lat, load = g["latency"], g["load"]
        assert lat["requests"] == 12 and g["cached_query"]["requests"] == 10
        assert set(lat["stages_ms"]) == {"encode", "search", "serialize"}
        assert 0 < lat["ms"]["p50"] <= lat["ms"]["p99"] and lat["stages_ms"]["encode"]["p50"] > 0
        assert g["cached_query"]["stages_ms"]["encode"]["p50"] < lat["stages_ms"]["encode"]["p50"]  # a cache hit
        assert load["requests"] == load["completed"] == 40 and load["errors"] == 0 and load["concurrency"] == 16
        assert load["requests_per_s"] > 0 and load["ms"]["p50"] <= load["ms"]["p99"]
        assert g["text_tower"].startswith("TextEncoder") and g["goal_ms"] is None  # no goal at --small sizes
    assert json.loads(out.read_text())["serve"]["galleries"][1]["load"]["completed"] == 40
    md = out.with_suffix(".md").read_text()
    assert "## Search server" in md and md.count("\n| ") == 4  # header, rule, one row per gallery
