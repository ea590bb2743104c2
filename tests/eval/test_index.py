"""The search index: the exact top-k against a brute-force reference (ties by gallery row, however it is blocked), HNSW
against exact, its file beside the gallery (reused; rebuilt when stale, truncated or foreign), the one-line error
without faiss, `search --index hnsw` end to end on the trained demo checkpoint, and the bench's index part."""

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clip_lab.eval.index as ix
from clip_lab.__main__ import main
from clip_lab.errors import ClipLabError
from clip_lab.eval.index import ExactIndex, HnswIndex, IndexSpec, build_hnsw, hnsw_path, open_hnsw, open_index
from clip_lab.jobs import search
from clip_lab.jobs.index_bench import exact_scores as found_scores
from clip_lab.jobs.index_bench import recall, synthetic_gallery


def ckpt_of(run):
    return str(run / "checkpoints" / "best.ckpt")


def dyadic_units(n, dim=16, seed=0):
    """Unit rows of four entries +-0.5: every inner product is a multiple of 0.25, exact in any summation order, so
    ties are true ties and a brute-force reference can be trusted bit for bit."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, dim), np.float32)
    for row in x:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return torch.from_numpy(x)


def reference(gallery, queries, k):
    """Full sort of every score by (score descending, row ascending), in float64."""
    scores = queries.double() @ gallery.double().T
    rows = [np.lexsort((np.arange(len(gallery)), -s.numpy()))[:k] for s in scores]
    rows = torch.from_numpy(np.stack(rows))
    return scores.gather(1, rows).float(), rows


# -- exact -------------------------------------------------------------------------------------------------------------
def test_exact_index_known_answer_ties_go_to_the_lower_row(monkeypatch):
    e1, e2, e3 = torch.eye(3)
    r = 2**-0.5
    gallery = torch.stack([e1, e2, e1, (e1 + e2) * r, -e1, e1, (e1 + e3) * r])
    queries = torch.stack([e1, e2, -e1])
    expected = [[0, 2, 5, 3, 6], [1, 3, 0, 2, 4], [4, 1, 3, 6, 0]]
    for chunk in (ix.CHUNK, 3, 2, 1):  # one block, and blocks that split the duplicates of row 0 apart
        monkeypatch.setattr(ix, "CHUNK", chunk)
        index = ExactIndex(gallery, "cpu")
        scores, rows = index.search(queries, 5)
        assert rows.tolist() == expected, chunk
        assert scores[0].tolist() == pytest.approx([1, 1, 1, r, r])
        assert index.top_k(e1, 2) == ([1.0, 1.0], [0, 2])  # topk alone may return row 5 for either place
        assert index.search(e1, 50)[1].tolist() == [[0, 2, 5, 3, 6, 1, 4]]  # k above n: the whole gallery, ordered
    assert index.describe() == {"kind": "exact", "device": "cpu"}


@pytest.mark.parametrize("chunk, scores_at_once", [(ix.CHUNK, ix.SCORES), (64, ix.SCORES), (7, 1000), (500, 70)])
def test_exact_index_equals_brute_force_on_a_gallery_full_of_ties(monkeypatch, chunk, scores_at_once):
    gallery = dyadic_units(600)
    gallery = torch.cat([gallery, gallery[::7]])  # exact duplicates, far from their originals
    queries = dyadic_units(40, seed=1)
    monkeypatch.setattr(ix, "CHUNK", chunk)
    monkeypatch.setattr(ix, "SCORES", scores_at_once)
    for k in (1, 10, 37):
        want_scores, want_rows = reference(gallery, queries, k)
        scores, rows = ExactIndex(gallery, "cpu").search(queries, k)
        assert torch.equal(rows, want_rows) and torch.equal(scores, want_scores), k
        assert ExactIndex(gallery.half(), "cpu").search(queries[3], k)[1][0].tolist() == want_rows[3].tolist()


def test_a_single_query_scores_bit_for_bit_as_the_old_cpu_loop():
    g = torch.Generator().manual_seed(0)
    gallery = F.normalize(torch.randn(70000, 64, generator=g), dim=-1).half()  # two blocks of 65,536 rows
    query = F.normalize(torch.randn(64, generator=g), dim=0)
    old = torch.cat([block.float() @ query.float() for block in gallery.split(1 << 16)]).topk(25)
    scores, rows = ExactIndex(gallery, "cpu").top_k(query, 25)
    assert rows == old.indices.tolist() and scores == old.values.tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_exact_index_on_the_gpu_equals_the_cpu():
    gallery, queries = dyadic_units(3000), dyadic_units(50, seed=1)
    cpu, gpu = ExactIndex(gallery, "cpu").search(queries, 20), ExactIndex(gallery, "cuda").search(queries, 20)
    assert torch.equal(cpu[1], gpu[1]) and torch.equal(cpu[0], gpu[0]) and gpu[1].device.type == "cpu"


def test_galleries_of_non_unit_rows_and_bad_queries_are_refused():
    with pytest.raises(ClipLabError, match=r"gallery x.pt has 2 rows that are not unit vectors \(row 1"):
        ExactIndex(torch.tensor([[1.0, 0], [3, 4], [0, 0]]), "cpu", what="gallery x.pt")
    with pytest.raises(ClipLabError, match="not unit vectors"):
        ExactIndex(torch.tensor([[1.0, 0], [float("nan"), 0]]), "cpu")
    index = ExactIndex(torch.eye(4), "cpu")
    with pytest.raises(ClipLabError, match="do not match the gallery's 4 dimensions"):
        index.search(torch.ones(1, 3), 1)
    with pytest.raises(ClipLabError, match="NaN or inf"):
        index.search(torch.tensor([1.0, float("nan"), 0, 0]), 1)
    assert index.top_k(torch.tensor([0, 0, 7.0, 1]), 2) == ([7.0, 1.0], [2, 3])  # a query's norm changes no ranking


# -- HNSW --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clustered():
    return synthetic_gallery(2000, 60, dim=32)


def test_hnsw_with_a_large_ef_search_finds_the_exact_top_k(clustered):
    gallery, queries = clustered
    exact_scores, exact_rows = ExactIndex(gallery, "cpu").search(queries, 10)
    graph = build_hnsw(gallery, m=16, ef_construction=100)
    scores, rows = HnswIndex(graph, ef_search=1000).search(queries, 10)
    assert torch.equal(rows, exact_rows)
    assert torch.allclose(scores, exact_scores, atol=1e-5)  # inner products, not L2 distances
    # a starved search misses some: the setting is really passed to FAISS
    low = HnswIndex(graph, ef_search=1).search(queries, 10)[1]
    assert recall(exact_scores, found_scores(gallery, queries, rows), 10) == 1.0
    assert recall(exact_scores, found_scores(gallery, queries, low), 10) < 1


def test_hnsw_index_is_saved_beside_the_gallery_and_reused(clustered, tmp_path, caplog):
    gallery, queries = clustered
    gallery_file = tmp_path / "gallery_val2014_72_crop64_abc.pt"
    with caplog.at_level(logging.INFO, logger="clip_lab"):
        first = open_hnsw(gallery, gallery_file, m=8, ef_construction=40, ef_search=64)
    path = tmp_path / "gallery_val2014_72_crop64_abc.hnsw_M8_efc40.pt"
    assert first.path == path == hnsw_path(gallery_file, 8, 40) and path.is_file() and "built" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing half-written beside it
    assert first.describe() == {
        "kind": "hnsw",
        "m": 8,
        "ef_construction": 40,
        "ef_search": 64,
        "file": str(path),
        "faiss": ix.require_faiss().__version__,
    }
    stamp = path.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clip_lab"):
        second = open_index(IndexSpec("hnsw", ef_search=64, m=8, ef_construction=40), gallery, gallery_file)
    assert "reused" in caplog.text and path.stat().st_mtime_ns == stamp
    for a, b in zip(first.search(queries, 10), second.search(queries, 10)):
        assert torch.equal(a, b)


def test_a_stale_hnsw_index_is_rebuilt(clustered, tmp_path, caplog):
    gallery, queries = clustered
    gallery_file = tmp_path / "g.pt"
    open_hnsw(gallery, gallery_file, m=8, ef_construction=40)
    path = hnsw_path(gallery_file, 8, 40)

    # the gallery changed: row 5 is now a query, which must come back first
    changed = gallery.clone()
    changed[5] = queries[0]
    with caplog.at_level(logging.INFO, logger="clip_lab"):
        index = open_hnsw(changed, gallery_file, m=8, ef_construction=40)
    assert "stale (gallery_sha256 changed)" in caplog.text and index.top_k(queries[0], 1)[1] == [5]
    assert torch.load(path, weights_only=True)["meta"]["gallery_sha256"] == ix.fingerprint(changed)

    # another M: another file, the first one left as it was
    stamp = path.stat().st_mtime_ns
    other = open_hnsw(changed, gallery_file, m=12, ef_construction=40)
    assert other.path == tmp_path / "g.hnsw_M12_efc40.pt" and other.describe()["m"] == 12
    assert path.stat().st_mtime_ns == stamp

    # a file whose stored settings disagree with its name (copied over, another FAISS) is not trusted
    for key, value in (("m", 16), ("faiss", "0.0.1")):
        cache = torch.load(path, weights_only=True)
        cache["meta"][key] = value
        torch.save(cache, path)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="clip_lab"):
            open_hnsw(changed, gallery_file, m=8, ef_construction=40)
        assert f"stale ({key} changed)" in caplog.text
        assert torch.load(path, weights_only=True)["meta"][key] != value


def test_a_truncated_or_foreign_hnsw_file_is_rebuilt(clustered, tmp_path, caplog):
    gallery, queries = clustered
    gallery_file = tmp_path / "g.pt"
    expected = open_hnsw(gallery, gallery_file, m=8, ef_construction=40).search(queries, 5)
    path = hnsw_path(gallery_file, 8, 40)
    data = path.read_bytes()

    path.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.INFO, logger="clip_lab"):
        again = open_hnsw(gallery, gallery_file, m=8, ef_construction=40)
    assert "is unreadable" in caplog.text and path.read_bytes() != data[: len(data) // 2]
    assert torch.equal(again.search(queries, 5)[1], expected[1])  # graph building may vary; the answer here does not

    # a torch file FAISS cannot read (right metadata, garbage bytes)
    cache = torch.load(path, weights_only=True)
    cache["index"] = torch.randint(0, 256, (4096,), dtype=torch.uint8)
    torch.save(cache, path)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clip_lab"):
        open_hnsw(gallery, gallery_file, m=8, ef_construction=40)
    assert "HNSW index" in caplog.text and "is unreadable (RuntimeError" in caplog.text
    assert len(torch.load(path, weights_only=True)["index"]) > 4096


def test_without_faiss_hnsw_is_one_clear_line_before_the_model_loads(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    with pytest.raises(ClipLabError, match=r"--index hnsw needs FAISS.*pip install faiss-cpu"):
        IndexSpec("hnsw").check()
    with pytest.raises(ClipLabError, match="needs FAISS"):
        open_index(IndexSpec("hnsw"), torch.eye(3), tmp_path / "g.pt")
    assert open_index(IndexSpec(), torch.eye(3), tmp_path / "g.pt").top_k(torch.eye(3)[1], 1) == ([1.0], [1])
    # the checkpoint does not exist: the error is about FAISS, so it was checked first
    capsys.readouterr()
    assert main(["search", "--ckpt_path", str(tmp_path / "none.ckpt"), "--text", "a cat", "--index", "hnsw"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs FAISS" in err[0], err
    assert main(["bench", "--only", "index", "--root", str(tmp_path / "b"), "--out", str(tmp_path / "b.json")]) == 2
    assert "needs FAISS" in capsys.readouterr().err and not (tmp_path / "b.json").exists()


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--ef_search", "0", "--ef_search must be at least 1, not 0"),
        ("--hnsw_m", "1", "--hnsw_m must be at least 2, not 1"),
        ("--ef_construction", "-5", "--ef_construction must be at least 1, not -5"),
    ],
)
def test_bad_index_settings_are_one_line_before_the_model_loads(tmp_path, capsys, flag, value, message):
    capsys.readouterr()
    assert main(["search", "--ckpt_path", str(tmp_path / "none.ckpt"), "--text", "a cat", flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


# -- search and bench end to end ---------------------------------------------------------------------------------------
def test_search_with_hnsw_returns_the_exact_top_k_and_keeps_its_index_beside_the_gallery(
    trained_run, demo_root, tmp_path, caplog
):
    common = ["--ckpt_path", ckpt_of(trained_run), "--k", "10", "--cache_dir", str(tmp_path / "cache")]
    text = [*common, "--text", "a red circle"]
    exact = search.main([*text, "--out", str(tmp_path / "exact.json")])
    hnsw = search.main([*text, "--index", "hnsw", "--ef_search", "400", "--out", str(tmp_path / "hnsw.json")])
    assert [r["image_id"] for r in hnsw["results"]] == [r["image_id"] for r in exact["results"]]
    assert [r["score"] for r in hnsw["results"]] == pytest.approx([r["score"] for r in exact["results"]], abs=1e-5)
    assert exact["index"] == {"kind": "exact", "device": "cuda" if torch.cuda.is_available() else "cpu"}
    gallery = Path(hnsw["gallery"]["cache"])
    index_file = gallery.with_name(gallery.stem + ".hnsw_M32_efc200.pt")
    assert hnsw["index"] == {
        "kind": "hnsw",
        "m": 32,
        "ef_construction": 200,
        "ef_search": 400,
        "file": str(index_file),
        "faiss": ix.require_faiss().__version__,
    }
    assert index_file.is_file() and gallery.parent == tmp_path / "cache"
    assert json.loads((tmp_path / "hnsw.json").read_text())["index"] == hnsw["index"]
    stamp = index_file.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="clip_lab"):
        again = search.main([*text, "--index", "hnsw", "--ef_search", "400", "--out", str(tmp_path / "again.json")])
    assert index_file.stat().st_mtime_ns == stamp and "HNSW index" in caplog.text and "reused" in caplog.text
    assert again["results"] == hnsw["results"]

    # image -> captions: the index of the caption cache, beside it (duplicate captions may swap places: scores agree)
    image = ["--image", str(demo_root / "val2014" / "COCO_val2014_000001000004.jpg")]
    exact = search.main([*common, *image, "--out", str(tmp_path / "exact_i.json")])
    hnsw = search.main([*common, *image, "--index", "hnsw", "--ef_search", "600", "--out", str(tmp_path / "h_i.json")])
    captions = Path(hnsw["gallery"]["cache"])
    assert hnsw["index"]["file"] == str(captions.with_name(captions.stem + ".hnsw_M32_efc200.pt"))
    assert Path(hnsw["index"]["file"]).is_file() and captions.parent == tmp_path / "cache"
    assert [r["score"] for r in hnsw["results"]] == pytest.approx([r["score"] for r in exact["results"]], abs=1e-5)


def test_bench_index_part_prints_and_writes_its_table(trained_run, tmp_path, capsys):
    out = tmp_path / "bench" / "index_cpu.json"
    capsys.readouterr()
    assert (
        main(
            [
                "bench",
                "--small",
                "--only",
                "index",
                "--ckpt_path",
                ckpt_of(trained_run),
                "--root",
                str(tmp_path / "root"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    part = result["index"]
    assert [g["name"] for g in part["galleries"]] == ["demo t2i", "demo i2t", "synthetic"] and part["skipped"] == []
    demo_t2i, demo_i2t, synthetic = part["galleries"]
    assert (demo_t2i["n"], demo_t2i["queries"], demo_i2t["n"], demo_i2t["queries"]) == (96, 100, 480, 96)
    assert (synthetic["n"], synthetic["dim"], synthetic["queries"]) == (3000, 64, 100)
    exact_rows = 2 if torch.cuda.is_available() else 1  # exact on the CPU, and on the GPU when there is one
    for g in part["galleries"]:
        reference, hnsw = g["rows"][0], g["rows"][exact_rows:]
        assert (reference["index"], reference["device"], reference["recall@10"]) == ("exact", "cpu", 1.0)
        assert (
            [r["ef_search"] for r in hnsw if r["index"] == "hnsw"]
            == [16, 32, 64, 128, 256]
            == [r.get("ef_search") for r in hnsw]
        )
        assert all(r["latency_ms"]["p99"] >= r["latency_ms"]["p50"] > 0 and r["batch_qps"] > 0 for r in g["rows"])
        assert all(0 <= r["recall@1"] <= 1 and 0 <= r["recall@10"] <= 1 for r in g["rows"])
        assert hnsw[-1]["recall@10"] >= 0.95 and hnsw[-1]["size_bytes"] > reference["size_bytes"] / 2
    assert synthetic["rows"][exact_rows]["recall@10"] < synthetic["rows"][-1]["recall@10"]  # efSearch 16 misses some
    assert not (tmp_path / "root").exists()  # no JPEGs generated for a part that reads none
    md = out.with_suffix(".md").read_text()
    assert (
        md.count("\n| ") == 2 + 3 * (5 + exact_rows) and "Command: `python -m clip_lab bench --small --only index" in md
    )
    printed = capsys.readouterr().out
    assert "HNSW efSearch 256" in printed and "R@10" in printed and "synthetic (3,000 x 64)" in printed
    assert sorted(p.name for p in out.parent.iterdir()) == ["index_cpu.json", "index_cpu.md"]


def test_recall_counts_either_copy_of_a_duplicate_and_synthetic_draws_are_seeded():
    truth = torch.tensor([[0.9, 0.9, 0.5], [0.8, 0.7, 0.6]])
    assert recall(truth, torch.tensor([[0.9, 0.5, 0.1], [0.8, 0.7, 0.6]]), 2) == 0.75
    assert recall(truth, torch.tensor([[0.9, 0.9, 0.1], [0.7, 0.6, float("-inf")]]), 1) == 0.5
    a, qa = synthetic_gallery(500, 20, dim=16, seed=3)
    b, qb = synthetic_gallery(500, 20, dim=16, seed=3)
    assert torch.equal(a, b) and torch.equal(qa, qb) and not torch.equal(a, synthetic_gallery(500, 20, 16, seed=4)[0])
    assert torch.allclose(a.norm(dim=1), torch.ones(500)) and (qa @ a.T).max() < 1 - 1e-4  # queries are new points
