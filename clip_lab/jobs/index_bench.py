"""The `index` part of `python -m clip_lab bench`: HNSW recall against exact search, latency, throughput, per gallery.

Galleries (each searched for its top-10 by every index, one query at a time and as one batch):
  demo t2i   the demo run's image gallery (val2014, through `infer.image_gallery`, as `search --text` reads it),
             queried by a seeded sample of the split's caption embeddings (its caption cache, built by the same
             text encoder `search` encodes a query with); real queries are new sentences, these are the split's own
  demo i2t   the demo run's caption gallery (`infer.caption_gallery`, float16, as `search --image` reads it),
             queried by the split's image embeddings (what `search --image` computes for one of those files)
  synthetic  100,000 unit vectors of 512 dimensions from a seeded mixture of 1,000 Gaussian clusters (see
             `synthetic_gallery`), queried by 1,000 fresh draws of the same mixture (not gallery members)
Recall@k: the mean fraction of the exact top-k that the index returns in its own top-k, a returned row counting when
its exact score reaches the exact k-th score (less 1e-5 for float rounding), so of two identical captions either
copy is a hit. The exact CPU index is the reference; the exact GPU index is checked against it the same way.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clip_lab.eval.index import ExactIndex, HnswIndex, Index, build_hnsw, require_faiss

log = logging.getLogger(__name__)

K = 10  # recall@1 and recall@10 both come from one top-10 search, the `search` job's usual k or above
WARMUP = 5  # untimed queries before each timing: thread pools, CUDA kernels, first-touch pages
BATCH_REPEATS = 3  # batch timings repeated, the median kept: this part often runs on shared cores
TOL = 1e-5  # float32 inner products from FAISS and from torch differ in the last bits
SYNTHETIC = dict(seed=0, clusters=1000, rank=64, spread=1.0, jitter=0.1)  # the synthetic gallery's mixture


@dataclass
class Gallery:
    name: str
    vectors: Tensor  # [n, dim] unit rows, in the dtype search reads them in
    queries: Tensor  # [q, dim]
    about: str  # what the rows and the queries are, for the table's notes


def synthetic_gallery(
    n: int,
    n_queries: int,
    dim: int = 512,
    seed: int = 0,
    clusters: int = 1000,
    rank: int = 64,
    spread: float = 1.0,
    jitter: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """(gallery `[n, dim]`, queries `[n_queries, dim]`): unit vectors from one seeded mixture, queries drawn after the
    gallery from the same stream, so none is a gallery member.

    A draw is `normalize(c + spread * u + jitter * e)`: `c` one of `clusters` random unit centres (chosen uniformly),
    `u` a Gaussian of norm ~1 in a `rank`-dimensional subspace shared by all clusters (embeddings vary along few
    directions), `e` an isotropic Gaussian of norm ~1. With the defaults a query's nearest gallery row has cosine
    ~0.6; the bench records the measured mean beside each table.
    """
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, dim, generator=g), dim=-1)
    basis = torch.randn(rank, dim, generator=g) / dim**0.5  # rows of norm ~1

    def draw(m: int) -> Tensor:
        out = []
        for s in range(0, m, 1 << 15):  # bounded temporaries at any n
            b = min(1 << 15, m - s)
            c = centres[torch.randint(clusters, (b,), generator=g)]
            u = torch.randn(b, rank, generator=g) @ basis / rank**0.5
            e = torch.randn(b, dim, generator=g) / dim**0.5
            out.append(F.normalize(c + spread * u + jitter * e, dim=-1))
        return torch.cat(out)

    return draw(n), draw(n_queries)


def demo_galleries(ckpt_path: Path, device: torch.device, n_queries: int, seed: int = 0) -> list[Gallery]:
    """The demo run's image and caption galleries of its test split, read through the code `search` runs."""
    from clip_lab.jobs.infer import caption_gallery, image_gallery, open_checkpoint, open_split

    ckpt = open_checkpoint(ckpt_path, device.type)
    split = open_split(ckpt, ckpt.data["test_split"])
    images, usable, _ = image_gallery(ckpt, split)
    captions, _ = caption_gallery(ckpt, split)
    g = torch.Generator().manual_seed(seed)
    text = torch.randperm(len(captions), generator=g)[:n_queries].sort().values
    image = torch.randperm(len(images), generator=g)[:n_queries].sort().values
    return [
        Gallery(
            "demo t2i",
            images,
            captions[text].float(),
            f"{len(images):,} image embeddings of the demo's {split.name} ({ckpt.path}); queries: "
            f"{len(text):,} of its {len(captions):,} caption embeddings (seeded sample)",
        ),
        Gallery(
            "demo i2t",
            captions,
            images[image],
            f"{len(captions):,} caption embeddings (float16) of the demo's {split.name}; queries: "
            f"{len(image):,} of its {len(images):,} image embeddings (seeded sample)",
        ),
    ]


def recall(truth: Tensor, found: Tensor, k: int) -> float:
    """Mean fraction of the exact top-k found: `truth` `[q, >=k]` exact scores best first, `found` `[q, >=k]` the exact
    scores of the rows an index returned (-inf where it returned none)."""
    kth = truth[:, k - 1 : k]
    return float(((found[:, :k] >= kth - TOL).sum(1).clamp(max=k).double() / k).mean())


def exact_scores(vectors: Tensor, queries: Tensor, rows: Tensor) -> Tensor:
    """The float32 inner products of each query with the gallery rows `rows` `[q, k]` returned for it (-1: -inf)."""
    picked = vectors[rows.clamp(min=0)].float()
    scores = (picked * queries.float()[:, None]).sum(-1)
    return scores.masked_fill(rows < 0, float("-inf"))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def measure(index: Index, queries: Tensor) -> dict[str, Any]:
    """Per-query latency (one query a call, as `search` runs) and batch throughput (all queries in one call)."""
    for q in queries[:WARMUP]:
        index.search(q[None], K)
    ms = np.array([timed(lambda q=q: index.search(q[None], K))[1] for q in queries]) * 1e3
    index.search(queries[:WARMUP], K)
    runs = [timed(lambda: index.search(queries, K)) for _ in range(BATCH_REPEATS)]
    (scores, rows), _ = runs[0]
    batch_s = float(np.median([dt for _, dt in runs]))
    return {
        "rows": rows,
        "latency_ms": {
            "mean": float(ms.mean()),
            "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)),
        },
        "batch_queries": len(queries),
        "batch_qps": len(queries) / batch_s,
    }


def bench_gallery(
    g: Gallery, device: torch.device, ef_search: list[int], m: int, ef_construction: int
) -> dict[str, Any]:
    """Exact on the CPU (the reference), exact on the GPU when there is one, HNSW at each efSearch."""
    faiss = require_faiss()
    n, dim = g.vectors.shape
    rows: list[dict[str, Any]] = []

    def add(name: str, index: Index, build_s: float, size: int, **extra: Any) -> Tensor:
        r = measure(index, g.queries)
        found = exact_scores(g.vectors, g.queries, r.pop("rows"))
        row = {"index": name, **extra, "build_s": build_s, "size_bytes": size, **r}
        if rows:  # the first row is the reference itself
            row |= {"recall@1": recall(truth, found, 1), "recall@10": recall(truth, found, K)}
        else:
            row |= {"recall@1": 1.0, "recall@10": 1.0}
        rows.append(row)
        log.info(
            "bench index: %s, %s %s: R@10 %.3f, %.3f ms/query, %.0f queries/s in a batch",
            g.name,
            name,
            extra.get("ef_search", extra["device"]),
            row["recall@10"],
            row["latency_ms"]["mean"],
            row["batch_qps"],
        )
        return found

    raw = g.vectors.numel() * g.vectors.element_size()
    cpu, build_s = timed(lambda: ExactIndex(g.vectors, "cpu"))
    truth = add("exact", cpu, build_s, raw, device="cpu")
    if device.type == "cuda":
        gpu, build_s = timed(lambda: (ExactIndex(g.vectors, device), torch.cuda.synchronize(device))[0])
        add("exact", gpu, build_s, raw, device="cuda")
        del gpu
    graph, build_s = timed(lambda: build_hnsw(g.vectors, m, ef_construction))
    size = len(faiss.serialize_index(graph))
    for ef in ef_search:
        add("hnsw", HnswIndex(graph, ef), build_s, size, device="cpu", ef_search=ef)
    top = cpu.search(g.queries, K)[0]
    return {
        "name": g.name,
        "about": g.about,
        "n": n,
        "dim": dim,
        "dtype": str(g.vectors.dtype).removeprefix("torch."),
        "queries": len(g.queries),
        "exact_top1_mean": float(top[:, 0].mean()),
        "exact_top10_mean": float(top[:, -1].mean()),
        "rows": rows,
    }


def run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Every gallery: the demo's two if its checkpoint exists (skipped with a note otherwise), and the synthetic one."""
    faiss = require_faiss()
    load = [os.getloadavg()[0]]  # CPU timings on shared cores: how busy the machine was is part of the result
    galleries: list[Gallery] = []
    skipped = []
    ckpt = Path(args.ckpt_path)
    if ckpt.is_file():
        galleries += demo_galleries(ckpt, device, args.index_queries)
    else:
        skipped.append(
            f"demo galleries: no checkpoint at {ckpt} (run `python -m clip_lab demo` first, or pass --ckpt_path)"
        )
        log.warning("bench index: %s", skipped[-1])
    t0 = time.perf_counter()
    vectors, queries = synthetic_gallery(args.index_n, args.index_queries, args.index_dim, **SYNTHETIC)
    log.info("bench index: synthetic gallery %s drawn in %.1f s", tuple(vectors.shape), time.perf_counter() - t0)
    mix = SYNTHETIC
    galleries.append(
        Gallery(
            "synthetic",
            vectors,
            queries,
            f"{args.index_n:,} x {args.index_dim} unit vectors from `index_bench.synthetic_gallery` "
            f"(seed {mix['seed']}: {mix['clusters']:,} random unit centres, spread {mix['spread']} "
            f"in a shared {mix['rank']}-d subspace, jitter {mix['jitter']} isotropic); queries: "
            f"{args.index_queries:,} fresh draws of the same mixture",
        )
    )
    results = [bench_gallery(g, device, args.ef_search, args.hnsw_m, args.ef_construction) for g in galleries]
    load.append(os.getloadavg()[0])
    return {
        "k": K,
        "m": args.hnsw_m,
        "ef_construction": args.ef_construction,
        "ef_search": list(args.ef_search),
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": {"start": load[0], "end": load[1]},
        "skipped": skipped,
        "galleries": results,
    }


HEADERS = ("gallery", "index", "build", "size", "R@1", "R@10", "mean ms", "p50 ms", "p99 ms", "batch q/s")


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """One table row per gallery and index: the columns of `HEADERS`."""
    out = []
    for g in result["galleries"]:
        for r in g["rows"]:
            name = f"HNSW efSearch {r['ef_search']}" if r["index"] == "hnsw" else f"exact ({r['device']})"
            lat = r["latency_ms"]
            out.append(
                (
                    f"{g['name']} ({g['n']:,} x {g['dim']})",
                    name,
                    f"{r['build_s']:.2f} s",
                    f"{r['size_bytes'] / 2**20:.1f} MB",
                    f"{r['recall@1']:.3f}",
                    f"{r['recall@10']:.3f}",
                    f"{lat['mean']:.3f}",
                    f"{lat['p50']:.3f}",
                    f"{lat['p99']:.3f}",
                    f"{r['batch_qps']:,.0f}",
                )
            )
    return out


def markdown(result: dict[str, Any]) -> str:
    """The section `bench` writes below its header: settings, what each gallery is, the table."""
    from clip_lab.report.tables import markdown_table

    load = result["load_average_1min"]
    lines = [
        "## Search index: HNSW against exact search",
        "",
        f"FAISS {result['faiss']} ({result['faiss_threads']} threads), torch threads {result['torch_threads']}; "
        f"HNSW `IndexHNSWFlat` inner product, M {result['m']}, efConstruction {result['ef_construction']}; "
        f"top-{result['k']} per query. Recall against the exact CPU top-k (a row counts when its exact score "
        "reaches the exact k-th score). Latency: one query per call, as `search` runs; batch: all queries in one "
        "call (median of 3). Build: the index from embeddings in memory; size: the serialized index (exact: the "
        f"embeddings). 1-minute load average at start / end: {load['start']:.1f} / {load['end']:.1f}.",
        "",
    ]
    for g in result["galleries"]:
        lines.append(
            f"- **{g['name']}**: {g['about']}; mean exact top-1 cosine {g['exact_top1_mean']:.3f}, "
            f"10th {g['exact_top10_mean']:.3f}"
        )
    lines += [f"- skipped: {s}" for s in result["skipped"]]
    lines += ["", markdown_table(HEADERS, rows(result))]
    return "\n".join(lines) + "\n"


def print_table(result: dict[str, Any]) -> None:
    """The table on stdout, columns aligned, then what was skipped."""
    from clip_lab.report.tables import text_table

    for line in text_table(HEADERS, rows(result), left=(0, 1)):
        print(line)
    for s in result["skipped"]:
        print(f"  skipped: {s}")
