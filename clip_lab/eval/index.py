"""Search indexes over unit embeddings: exact (chunked inner products) or FAISS HNSW, saved beside its gallery."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clip_lab.errors import ClipLabError
from clip_lab.files import load_cache, save_torch

log = logging.getLogger(__name__)

INDEX_VERSION = 1  # bump when what an HNSW index file stores changes
KINDS = ("exact", "hnsw")
CHUNK = 1 << 16  # gallery rows scored per block: a float32 copy of 202,654 caption embeddings at once would take 400 MB
SCORES = 1 << 24  # scores held at once for a batch of queries (64 MB of float32): fewer rows per block for big batches
NORM_TOL = 1e-2  # float16 caches round unit vectors to norms within ~1e-3 of 1; anything further was never normalized


@dataclass(frozen=True)
class IndexSpec:
    """Which index `search` scores with, and the HNSW settings (ignored by the exact index)."""

    kind: str = "exact"  # exact: every gallery row scored; hnsw: FAISS graph search, approximate
    ef_search: int = 128  # candidates kept during an HNSW query: recall against query time (see `bench --only index`)
    m: int = 32  # HNSW graph degree (FAISS's M): recall and memory against build time
    ef_construction: int = 200  # candidates kept while inserting: graph quality against build time

    def check(self) -> None:
        """One ClipLabError line for a bad setting, or a missing faiss when HNSW is asked for: before any model work."""
        if self.kind not in KINDS:
            raise ClipLabError(f"--index must be one of {', '.join(KINDS)}, not {self.kind!r}")
        for flag, value, least in (
            ("--ef_search", self.ef_search, 1),
            ("--hnsw_m", self.m, 2),
            ("--ef_construction", self.ef_construction, 1),
        ):
            if value < least:
                raise ClipLabError(f"{flag} must be at least {least}, not {value}")
        if self.kind == "hnsw":
            require_faiss()


def require_faiss() -> ModuleType:
    """The faiss module, imported only when an HNSW index is asked for (the exact index does not need it)."""
    try:
        import faiss
    except ImportError as e:
        raise ClipLabError(
            f"--index hnsw needs FAISS, which is not installed ({type(e).__name__}); "
            "`pip install faiss-cpu==1.15.1` (requirements.txt), or use --index exact"
        ) from e
    return faiss


class Index:
    """`search(queries, k)` over a fixed gallery; `top_k(query, k)` is the one-query form `search` uses."""

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(float32 scores, int64 gallery rows), both `[n_queries, min(k, n)]` on the CPU, best first per query."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the result JSON records about the index."""
        raise NotImplementedError

    def top_k(self, query: Tensor, k: int) -> tuple[list[float], list[int]]:
        """(scores, rows) of the `k` gallery rows most similar to one `query` (cosine of unit vectors), best first."""
        scores, rows = self.search(query.reshape(1, -1), k)
        keep = rows[0] >= 0  # FAISS pads with -1 where a graph walk found fewer than k rows
        return scores[0][keep].tolist(), rows[0][keep].tolist()


class ExactIndex(Index):
    """Every gallery row scored: inner products in blocks of `CHUNK` rows (float32), on `device`.

    Ties rank the lower gallery row first, whatever the blocking, so a duplicated caption always comes back the same.
    A single query goes through the same float32 products per block of rows as the CPU loop this replaces, so on the
    CPU its scores are bit for bit the old ones (tested); a batch of queries may differ in the last bits.
    """

    def __init__(self, gallery: Tensor, device: str | torch.device | None = None, what: str = "gallery") -> None:
        check_unit_rows(gallery, what)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.gallery = gallery.to(self.device)  # kept in its stored dtype (float16 captions: half the memory)

    def __len__(self) -> int:
        return len(self.gallery)

    @torch.no_grad()
    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        queries = _checked_queries(queries, self.gallery.shape[1]).to(self.device)
        k = min(k, len(self.gallery))
        rows_per_block = max(1, min(CHUNK, SCORES // max(1, len(queries))))
        best: list[tuple[Tensor, Tensor]] = []
        for start in range(0, len(self.gallery), rows_per_block):
            block = self.gallery[start : start + rows_per_block].float()
            scores, cols = top_k_rows(queries @ block.T, k)
            best.append((scores, cols + start))
        if len(best) == 1:
            scores, rows = best[0]
        else:  # the blocks' winners side by side: equal scores already sit in row order (blocks ascend, and so do
            # each block's ties), so the same rule picks the overall winners
            scores, rows = torch.cat([s for s, _ in best], 1), torch.cat([r for _, r in best], 1)
            scores, pick = top_k_rows(scores, k)
            rows = rows.gather(1, pick)
        return scores.cpu(), rows.cpu()

    def describe(self) -> dict[str, Any]:
        return {"kind": "exact", "device": self.device.type}


def top_k_rows(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per row of `[q, n]` scores, the `k` largest and their columns, best first, equal scores by ascending column.

    That order is total, so the winners of each block contain every overall winner from that block: blocking and
    merging cannot change the answer. `topk` alone may keep either of two equal scores at the k-th place.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    k = min(k, scores.shape[1])
    values, cols = scores.topk(min(k + 1, scores.shape[1]), dim=1)
    crowded = torch.empty(0, dtype=torch.long, device=scores.device)  # k = n: the whole row is taken, no cut
    if values.shape[1] > k:  # a (k+1)-th score equal to the k-th: ties across the cut, where topk picks arbitrarily
        crowded = (values[:, k] == values[:, k - 1]).nonzero().squeeze(1)
        values, cols = values[:, :k], cols[:, :k]
    if len(crowded):  # rare: only these rows pay for a full pass
        s, t = scores[crowded], values[crowded, k - 1 :]
        above, tie = s > t, s == t
        take = above | (tie & (tie.cumsum(1) <= k - above.sum(1, keepdim=True)))  # the lowest columns among the ties
        cols[crowded] = take.nonzero()[:, 1].view(len(crowded), k)
        values[crowded] = s.gather(1, cols[crowded])
    order = cols.argsort(dim=1)  # columns ascending, then a stable sort by score: equal scores stay in column order
    values, cols = values.gather(1, order), cols.gather(1, order)
    order = values.argsort(dim=1, descending=True, stable=True)
    return values.gather(1, order), cols.gather(1, order)


# -- HNSW --------------------------------------------------------------------------------------------------------------
class HnswIndex(Index):
    """A FAISS `IndexHNSWFlat` (inner product) over the gallery's float32 rows; `ef_search` is set per query."""

    def __init__(self, index: Any, ef_search: int, path: Path | None = None) -> None:
        self.faiss = require_faiss()
        self.index, self.ef_search, self.path = index, ef_search, path

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        queries = _checked_queries(queries, self.index.d)
        x = np.ascontiguousarray(queries.float().cpu().numpy())
        # parameters per call, not on the shared index: one loaded index can serve several efSearch values
        params = self.faiss.SearchParametersHNSW(efSearch=self.ef_search)
        scores, rows = self.index.search(x, min(k, self.index.ntotal), params=params)
        return torch.from_numpy(scores), torch.from_numpy(rows)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "hnsw",
            "m": self.index.hnsw.nb_neighbors(1),
            "ef_construction": self.index.hnsw.efConstruction,
            "ef_search": self.ef_search,
            "file": str(self.path) if self.path else None,
            "faiss": self.faiss.__version__,
        }


def build_hnsw(gallery: Tensor, m: int = 32, ef_construction: int = 200, what: str = "gallery") -> Any:
    """A new FAISS `IndexHNSWFlat(dim, m, METRIC_INNER_PRODUCT)` holding the gallery's rows as float32."""
    faiss = require_faiss()
    check_unit_rows(gallery, what)
    index = faiss.IndexHNSWFlat(gallery.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    for block in gallery.split(CHUNK):  # one float32 block at a time: FAISS keeps its own copy anyway
        index.add(np.ascontiguousarray(block.float().cpu().numpy()))
    return index


def hnsw_path(gallery_file: str | Path, m: int, ef_construction: int) -> Path:
    """`<gallery stem>.hnsw_M<m>_efc<ef_construction>.pt` beside the gallery cache it indexes."""
    gallery_file = Path(gallery_file)
    return gallery_file.with_name(f"{gallery_file.stem}.hnsw_M{m}_efc{ef_construction}.pt")


def hnsw_meta(gallery: Tensor, m: int, ef_construction: int) -> dict[str, Any]:
    """What an HNSW index file must match: the rows it indexes (by content), the graph settings, FAISS's version."""
    return {
        "version": INDEX_VERSION,
        "gallery_sha256": fingerprint(gallery),
        "n": len(gallery),
        "dim": gallery.shape[1],
        "m": m,
        "ef_construction": ef_construction,
        "metric": "inner_product",
        "faiss": require_faiss().__version__,
    }


def open_hnsw(
    gallery: Tensor, gallery_file: str | Path, m: int = 32, ef_construction: int = 200, ef_search: int = 128
) -> HnswIndex:
    """The HNSW index of `gallery` from its file beside `gallery_file`; built and saved if missing, unreadable or stale.

    The file is checked against a sha256 of the rows it indexes (not the gallery file's bytes): the image gallery
    drops the images its cache skipped, so the rows searched are what must match.
    """
    faiss = require_faiss()
    path = hnsw_path(gallery_file, m, ef_construction)
    meta = hnsw_meta(gallery, m, ef_construction)
    index = _load_hnsw(faiss, path, meta)
    if index is None:
        t0 = time.perf_counter()
        index = build_hnsw(gallery, m, ef_construction, what=f"gallery {gallery_file}")
        seconds = time.perf_counter() - t0
        # serialized by FAISS into a uint8 tensor inside a torch file: one atomic write, one checked load
        save_torch(
            {
                "meta": meta,
                "index": torch.from_numpy(faiss.serialize_index(index)),
                "built": {"gallery_file": str(gallery_file), "seconds": seconds},
            },
            path,
        )
        log.info(
            "HNSW index %s: %d vectors (M %d, efConstruction %d) built in %.1f s",
            path,
            len(gallery),
            m,
            ef_construction,
            seconds,
        )
    else:
        log.info("HNSW index %s: reused", path)
    return HnswIndex(index, ef_search, path)


def _load_hnsw(faiss: ModuleType, path: Path, meta: dict[str, Any]) -> Any | None:
    cache = load_cache(path, meta, "HNSW index")
    if cache is None:
        return None
    try:
        # deserialize_index returns the concrete class already (downcast_index of its temporary would dangle)
        index = faiss.deserialize_index(np.asarray(cache["index"].numpy()))
    except Exception as e:  # bytes torch could read but FAISS cannot: rebuild
        log.warning(
            "HNSW index %s is unreadable (%s: %s); rebuilding it",
            path,
            type(e).__name__,
            (str(e).strip().splitlines() or [""])[0],
        )
        return None
    if (
        not isinstance(index, faiss.IndexHNSWFlat)
        or (index.ntotal, index.d) != (meta["n"], meta["dim"])
        or index.metric_type != faiss.METRIC_INNER_PRODUCT
    ):
        log.warning("HNSW index %s holds another kind or shape of index; rebuilding it", path)
        return None
    return index


# -- shared ------------------------------------------------------------------------------------------------------------
def open_index(
    spec: IndexSpec, gallery: Tensor, gallery_file: str | Path, device: str | torch.device | None = None
) -> Index:
    """The index `spec` asks for over `gallery` (the rows of the cache file `gallery_file`, or a subset of them)."""
    spec.check()
    if spec.kind == "exact":
        return ExactIndex(gallery, device, what=f"gallery {gallery_file}")
    return open_hnsw(gallery, gallery_file, spec.m, spec.ef_construction, spec.ef_search)


def fingerprint(gallery: Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (~0.2 s for 100,000 x 512 float32)."""
    t = gallery.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype} {tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()


def check_unit_rows(gallery: Tensor, what: str = "gallery") -> None:
    """ClipLabError unless `gallery` is a `[n, dim]` tensor of finite unit rows: both indexes read cosine as an inner
    product, which only holds for normalized vectors."""
    if gallery.ndim != 2 or len(gallery) == 0:
        raise ClipLabError(
            f"{what} must be a non-empty [n, dim] matrix of embeddings, not shape "
            f"{tuple(gallery.shape)}; delete the file to rebuild it"
        )
    norms = torch.cat([block.float().norm(dim=1) for block in gallery.split(CHUNK)])
    bad = ~((norms - 1).abs() <= NORM_TOL)  # NaN compares False: counted as bad
    if bad.any():
        row = int(bad.nonzero()[0])
        raise ClipLabError(
            f"{what} has {int(bad.sum())} rows that are not unit vectors (row {row}: norm "
            f"{float(norms[row]):.4g}); its embeddings must be L2-normalized: delete the file to "
            "rebuild it"
        )


def _checked_queries(queries: Tensor, dim: int) -> Tensor:
    """Queries as float32 `[q, dim]`. Their norms do not matter (a positive scale keeps every ranking), NaN does."""
    queries = (queries[None] if queries.ndim == 1 else queries).float()
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ClipLabError(
            f"query embeddings of shape {tuple(queries.shape)} do not match the gallery's {dim} "
            "dimensions; embed queries with the checkpoint the gallery was built with"
        )
    if not torch.isfinite(queries).all():
        raise ClipLabError("a query embedding holds NaN or inf; check the checkpoint (a diverged run?)")
    return queries
