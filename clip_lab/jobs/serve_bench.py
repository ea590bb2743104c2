"""The `serve` part of `python -m clip_lab bench`: the search server's latency and throughput over real HTTP.

The real app (`serve.build_app`) runs under uvicorn in a background thread of this process on 127.0.0.1; clients
are stdlib `http.client` keep-alive connections in threads of the same process (they share its cores and its GIL
with the server, as a client on the same machine would share the cores). Every request is
`GET /api/models/<name>/images?text=...&k=10`, one text query to the top-10 images, through the exact index.
Galleries (one app serves both):
  demo       the demo run's test split (`--ckpt_path`), its image gallery and its own text tower, loaded as `serve`
             loads a checkpoint (skipped with a note when the file is missing)
  synthetic  40,504 images (val2014's size) with unit embeddings from `index_bench.synthetic_gallery` and one
             generated caption each; on the CPU the queries go through the demo checkpoint's text tower (skipped
             with a note without it), on a GPU through a CLIP text tower of ViT-B/32's shape (12 x 512, random
             weights, written once under --root), with or without the demo checkpoint
Queries are distinct generated captions, so the server's query-embedding cache never answers a timed one; one
repeated query (a cache hit) is timed apart. Measures, per gallery:
  latency    sequential requests on one connection after untimed warm-ups: p50 / p99 of the client's milliseconds
             from sending the request to reading the last byte of the body, and of each stage the server reports in
             its Server-Timing header (encode, search, serialize); "other" is the client's time less the stages
             (HTTP on both sides, routing and validation, the hop to a worker thread, the unknown-word check, the
             response model, the loopback)
  load       CONCURRENCY clients, each on its own connection, share a fixed number of requests: requests/s over the
             wall time from the first request to the last response, p50 / p99 latency, and the failed requests;
             not warmed up: the worker threads the server adds for it start cold, as after any idle spell
Percentiles are nearest-rank: each is a value that was measured. Every response must be 200 with k results; a
failure stops the part with the first error.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
import torch

from clip_lab.data.split import CaptionedSplit
from clip_lab.data.synthetic import coco_like_captions
from clip_lab.errors import ClipLabError
from clip_lab.jobs.infer import Checkpoint
from clip_lab.jobs.retriever import Retriever

log = logging.getLogger(__name__)

K = 10  # results per query, the page's and the API's default
WARMUP = 10  # untimed requests per gallery first: the encoder's first shapes, the split's lazy lookups, the sockets
CONCURRENCY = 16  # client threads of the load test
STAGES = ("encode", "search", "serialize")  # what serve reports in Server-Timing
VAL2014_IMAGES = 40504
GOALS = {  # what the server should reach at val2014's size with the exact index (printed, never enforced)
    "cpu": {"p50": 30.0, "p99": 100.0},  # a 2-core CPU, the demo's text tower
    "cuda": {"p50": 15.0},  # a GPU, a text tower of ViT-B/32's shape
}


def nearest_rank(values: Sequence[float], p: float) -> float:
    """The nearest-rank p-th percentile: the smallest measured value with at least p% of the values at or below it."""
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)])


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p99 (nearest-rank) and mean of milliseconds."""
    return {"p50": nearest_rank(values, 50), "p99": nearest_rank(values, 99), "mean": float(np.mean(values))}


def server_timing(header: str | None) -> dict[str, float]:
    """`encode;dur=1.2, search;dur=0.3` -> {"encode": 1.2, "search": 0.3} (milliseconds)."""
    out = {}
    for part in (header or "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name and dur:
            out[name] = float(dur)
    return out


def synthetic_split(n: int, root: Path) -> CaptionedSplit:
    """A split of `n` images (ids 0..n-1) with one generated caption each, in memory: nothing is read from disk (the
    image search route reads only ids, file names and captions), so its file paths need not exist."""
    return CaptionedSplit(
        name=f"synthetic{n}",
        annotation_file=root / "none",
        image_dir=root,
        image_ids=np.arange(n),
        file_names=[f"{i:012d}.jpg" for i in range(n)],
        caption_ids=np.arange(n),
        caption_image=np.arange(n),
        captions=coco_like_captions(n, seed=2),  # seed 0 trains the tokenizer, seed 1 gives the queries
    )


def untrained_checkpoint(device: torch.device) -> Checkpoint:
    """A Checkpoint of an untrained model, for a machine without the demo run: the synthetic gallery's Retriever is
    given its gallery and text tower, and reads only the checkpoint's device."""
    from clip_lab.train.module import ClipLab

    model = ClipLab("resnet18", weights=None, embed_dim=512).eval().to(device)
    return Checkpoint(Path("untrained"), "", model, {"dataset": "synthetic"}, device, 256)


def queries(n: int, seed: int = 1) -> list[str]:
    """`n` distinct caption-like texts, from another seed than the synthetic split's captions."""
    texts = list(dict.fromkeys(coco_like_captions(n + n // 10 + 100, seed)))
    if len(texts) < n:
        raise ClipLabError(f"only {len(texts)} distinct generated queries for the {n} asked for")
    return texts[:n]


# -- the client -----------------------------------------------------------------------------------------------------
def request(conn: HTTPConnection, model: str, text: str) -> tuple[float, dict[str, float]]:
    """(client ms, the server's stage ms) of one image search; ClipLabError unless it answers 200 with K results."""
    t0 = time.perf_counter()
    conn.request("GET", f"/api/models/{model}/images?text={quote(text)}&k={K}")
    response = conn.getresponse()
    body = response.read()
    ms = (time.perf_counter() - t0) * 1e3  # checking the body is the client's business, not the server's latency
    if response.status != 200:
        raise ClipLabError(f"{model}: HTTP {response.status} for {text!r}: {body[:200]!r}")
    if len(json.loads(body)["results"]) != K:
        raise ClipLabError(f"{model}: {len(json.loads(body)['results'])} results for {text!r}, not {K}")
    return ms, server_timing(response.getheader("Server-Timing"))


def sequential(port: int, model: str, texts: list[str]) -> dict[str, Any]:
    """Latency of `texts` sent one after another on one keep-alive connection: the client's ms and each stage's."""
    conn = HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        timed = [request(conn, model, t) for t in texts]
    finally:
        conn.close()
    stages = {}
    for name in STAGES:
        if any(name not in s for _, s in timed):
            raise ClipLabError(f"{model}: a response's Server-Timing header has no {name} stage")
        stages[name] = summary([s[name] for _, s in timed])
    other = [ms - sum(s[n] for n in STAGES) for ms, s in timed]
    return {
        "requests": len(texts),
        "ms": summary([ms for ms, _ in timed]),
        "stages_ms": stages,
        "other_ms": summary(other),
    }


def under_load(port: int, model: str, texts: list[str], concurrency: int = CONCURRENCY) -> dict[str, Any]:
    """`concurrency` clients on their own keep-alive connections, `texts` dealt out among them: requests/s from the
    first request to the last response, latency percentiles, and the failed requests (errors, not raised here)."""
    ms: list[float] = []
    errors: list[str] = []
    start = threading.Barrier(concurrency + 1)

    def client(mine: list[str]) -> None:
        conn = HTTPConnection("127.0.0.1", port, timeout=60)
        conn.connect()  # before the clock starts: the test is of requests, not of connection set-up
        start.wait()
        for text in mine:
            try:
                ms.append(request(conn, model, text)[0])  # list.append is atomic: no lock for the results
            except Exception as e:  # any failure counts, and the client goes on with a fresh connection
                errors.append(f"{type(e).__name__}: {e}"[:300])
                conn.close()
                conn = HTTPConnection("127.0.0.1", port, timeout=60)
        conn.close()

    threads = [threading.Thread(target=client, args=(texts[i::concurrency],)) for i in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    return {
        "requests": len(texts),
        "concurrency": concurrency,
        "seconds": seconds,
        "completed": len(ms),
        "requests_per_s": len(ms) / seconds,
        "ms": summary(ms) if ms else None,
        "errors": len(errors),
        "first_errors": errors[:5],
    }


# -- the galleries --------------------------------------------------------------------------------------------------
def tower(r: Retriever) -> str:
    """What the Retriever's text encoder is, for the table: its class, where it was loaded from, its width."""
    e = r.encoder
    where = getattr(e, "name", None) or r.ckpt.model.hparams.text_encoder
    return f"{type(e).__name__} {where} ({getattr(e, 'dim', r.ckpt.embed_dim)}-d)"


def galleries(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, Retriever], dict[str, str], list]:
    """(retrievers by model name, what each gallery is, skipped notes): the demo's and the synthetic one."""
    from clip_lab.jobs.index_bench import synthetic_gallery
    from clip_lab.jobs.infer import open_checkpoint

    retrievers, about, skipped = {}, {}, []
    path = Path(args.ckpt_path)
    ckpt = open_checkpoint(path, device) if path.is_file() else None
    if ckpt is None:
        skipped.append(
            f"demo gallery: no checkpoint at {path} (run `python -m clip_lab demo` first, or pass --ckpt_path)"
        )
        log.warning("bench serve: %s", skipped[-1])
    else:
        demo = Retriever(ckpt)  # the test split, the exact index and the text tower, as `serve` opens them
        retrievers["demo"] = demo
        about["demo"] = f"{len(demo.images):,} images of the demo's {demo.split.name} ({path})"
    encoder = None
    if device.type == "cuda":
        from clip_lab.jobs.bench import clip_text_b32
        from clip_lab.models.text import TextEncoder

        # the caption-cache part's tokenizer corpus (its first 20,000 captions): one model folder for both parts
        model_dir = clip_text_b32(Path(args.root), coco_like_captions(min(args.captions, 20000)), args.small)
        encoder = TextEncoder(str(model_dir)).to(device)
    elif ckpt is None:
        skipped.append("synthetic gallery: on the CPU its queries go through the demo checkpoint's text tower")
        return retrievers, about, skipped
    split = synthetic_split(args.serve_images, Path(args.root))
    synthetic = Retriever(ckpt or untrained_checkpoint(device), split, encoder=encoder)
    dim = encoder.dim if encoder is not None else ckpt.embed_dim
    emb = synthetic_gallery(args.serve_images, 1, dim)[0]  # gallery rows only: the queries here are texts
    synthetic.set_gallery("images", emb, np.arange(args.serve_images))
    retrievers["synthetic"] = synthetic
    about["synthetic"] = (
        f"{args.serve_images:,} x {dim} unit vectors from `index_bench.synthetic_gallery`, one generated caption "
        "each; queries embedded by "
        + ("a CLIP text tower of ViT-B/32's shape (random weights)" if encoder else "the demo checkpoint's text tower")
    )
    for r in retrievers.values():
        r.embed_texts(["a photo"])  # load and warm the text tower before the server starts, as `serve` does
    return retrievers, about, skipped


def goal(device: torch.device, n: int, name: str) -> dict[str, float] | None:
    """The latency goal a gallery is held to: the synthetic one at val2014's size only."""
    return GOALS[device.type] if name == "synthetic" and n == VAL2014_IMAGES else None


def run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Every gallery behind one server: sequential latency (distinct queries, then one repeated), then load."""
    import fastapi
    import pydantic
    import uvicorn

    from clip_lab.jobs import serve

    load_avg = [os.getloadavg()[0]]  # shared cores: how busy the machine was is part of the result
    retrievers, about, skipped = galleries(args, device)
    texts = queries(WARMUP + args.serve_requests + args.serve_load_requests)
    warm, timed, loaded = (
        texts[:WARMUP],
        texts[WARMUP : WARMUP + args.serve_requests],
        texts[WARMUP + args.serve_requests :],
    )
    repeated = "a man riding a horse on the beach."  # a fixed text, none of the generated ones (random word order)
    results = []
    with serve.running(serve.build_app(retrievers)) as url:
        port = urlsplit(url).port
        for name, r in retrievers.items():
            log.info("bench serve: %s ...", name)
            sequential(port, name, warm + [repeated])  # untimed; the repeated query's embedding is now cached
            latency = sequential(port, name, timed)
            cached = sequential(port, name, [repeated] * max(10, args.serve_requests // 4))
            load = under_load(port, name, loaded)
            if load["errors"]:
                raise ClipLabError(
                    f"bench serve: {load['errors']} of {load['requests']} requests to {name} failed under load "
                    f"(first: {load['first_errors'][0]})"
                )
            results.append(
                {
                    "name": name,
                    "about": about[name],
                    "images": len(r.images),
                    "dim": int(r.images.embeddings.shape[1]),
                    "index": r.images.index.describe(),
                    "text_tower": tower(r),
                    "latency": latency,
                    "cached_query": cached,
                    "load": load,
                    "goal_ms": goal(device, len(r.images), name),
                }
            )
            log.info("bench serve: %s %s", name, json.dumps(results[-1]["latency"]["ms"]))
    load_avg.append(os.getloadavg()[0])
    notes = [
        "timed queries are distinct generated captions: the query-embedding cache never answers one",
        "cached: one repeated query, answered from the query-embedding cache (encode is a lookup)",
    ]
    if device.type == "cpu" and "synthetic" in retrievers:
        notes.append(
            "synthetic gallery on the CPU: the demo's text tower embeds the queries into random vectors, so the "
            "scores mean nothing; the cost is what it would be"
        )
    return {
        "k": K,
        "warmup_requests": WARMUP,
        "environment": {
            "torch_threads": torch.get_num_threads(),
            "uvicorn": uvicorn.__version__,
            "http": "httptools" if importlib.util.find_spec("httptools") else "h11",  # uvicorn's "auto" choice
            "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            "fastapi": fastapi.__version__,
            "pydantic": pydantic.__version__,
            "clients": "http.client threads in the server's process, on 127.0.0.1",
            "load_average_1min": {"start": load_avg[0], "end": load_avg[1]},
        },
        "notes": notes,
        "skipped": skipped,
        "galleries": results,
    }


HEADERS = (
    "gallery",
    "text tower",
    "p50 ms",
    "p99 ms",
    "encode p50/p99",
    "search p50/p99",
    "serialize p50/p99",
    "other p50",
    "cached p50",
    "load req/s",
    "load p50/p99",
    "goal",
)


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """One table row per gallery: the columns of `HEADERS`."""
    out = []
    for g in result["galleries"]:
        lat, load, goal_ms = g["latency"], g["load"], g["goal_ms"]
        pair = lambda s: f"{s['p50']:.2f} / {s['p99']:.2f}"  # noqa: E731
        met = ""
        if goal_ms:
            ok = all(lat["ms"][p] <= v for p, v in goal_ms.items())
            met = ", ".join(f"{p} <= {v:g}" for p, v in goal_ms.items()) + (": met" if ok else ": missed")
        out.append(
            (
                f"{g['name']} ({g['images']:,} x {g['dim']}, {g['index']['kind']} on {g['index']['device']})",
                g["text_tower"],
                f"{lat['ms']['p50']:.2f}",
                f"{lat['ms']['p99']:.2f}",
                *(pair(lat["stages_ms"][s]) for s in STAGES),
                f"{lat['other_ms']['p50']:.2f}",
                f"{g['cached_query']['ms']['p50']:.2f}",
                f"{load['requests_per_s']:,.0f}",
                pair(load["ms"]),
                met,
            )
        )
    return out


def markdown(result: dict[str, Any]) -> str:
    """The section `bench` writes below its header: how it was measured, what each gallery is, the table."""
    from clip_lab.report.tables import markdown_table

    env, k = result["environment"], result["k"]
    load = env["load_average_1min"]
    latency = load_test = ""
    if g := next(iter(result["galleries"]), None):
        latency = f"{g['latency']['requests']} sequential requests on one keep-alive connection, "
        load_test = (
            f"Load: {g['load']['requests']} requests from {g['load']['concurrency']} clients on their own connections. "
        )
    lines = [
        "## Search server: latency and throughput over HTTP",
        "",
        f"uvicorn {env['uvicorn']} ({env['http']}, {env['loop']}), FastAPI {env['fastapi']}, pydantic "
        f"{env['pydantic']}, torch threads {env['torch_threads']}; clients: {env['clients']}. Each request: "
        f"`GET /api/models/<name>/images?text=...&k={k}`, {result['warmup_requests']} untimed ones first. Latency: "
        f"{latency}ms at the client from sending to the body's last byte; stages from the server's Server-Timing "
        f"header; other = client ms less the stages. {load_test}Percentiles nearest-rank. 1-minute load average at "
        f"start / end: {load['start']:.1f} / {load['end']:.1f}.",
        "",
    ]
    lines += [f"- **{g['name']}**: {g['about']}" for g in result["galleries"]]
    lines += [f"- {n}" for n in result["notes"]]
    lines += [f"- skipped: {s}" for s in result["skipped"]]
    lines += ["", markdown_table(HEADERS, rows(result))]
    return "\n".join(lines) + "\n"


def print_table(result: dict[str, Any]) -> None:
    """The table on stdout, columns aligned, then what was skipped."""
    from clip_lab.report.tables import text_table

    for line in text_table(HEADERS, rows(result), left=(0, 1, len(HEADERS) - 1)):
        print(line)
    for s in result["skipped"]:
        print(f"  skipped: {s}")
