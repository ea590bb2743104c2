"""Small file helpers: the packaged configs, atomic writes, JSON reads, content fingerprints, checked cache loads."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parent / "configs"  # installed with the package: found from any directory


def config_file(path: str) -> str:
    """`path` as given when it exists; else, for `configs/...`, the packaged config of that name (so `-c
    configs/coco.yaml` works from any directory once clip_lab is installed)."""
    p = Path(path)
    if not p.exists() and p.parts[:1] == ("configs",) and (CONFIGS / Path(*p.parts[1:])).exists():
        return str(CONFIGS / Path(*p.parts[1:]))
    return path


def read_json(path: str | os.PathLike) -> Any | None:
    """The parsed JSON file; None when it is absent or unreadable (cut short, hand-edited into invalid JSON)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on failure remove it.

    The rename is atomic on POSIX, so readers see either the old file or the complete new one, never half of it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # created like a plain open() would (mode 0o666 less the umask), so teammates read results/ as usual: mkstemp
    # would leave the final file readable by its owner alone (0o600)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:  # another writer drew the same name: draw again
            continue
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_json(obj: Any, path: str | os.PathLike) -> None:
    save_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def save_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_folder(path: str | os.PathLike) -> str:
    """SHA-256 over the names and contents of the files directly in a folder (a saved model's weights and configs)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def name_slug(name: str, limit: int = 60) -> str:
    """A model id or path as a file-name part: `openai/clip-vit-base-patch32` -> `openai_clip-vit-base-patch32`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/")).strip("_")[-limit:]


def load_cache(path: Path, meta: dict[str, Any], what: str) -> dict[str, Any] | None:
    """The torch cache file at `path` if its stored `meta` equals `meta` on every key of `meta`; None when it is
    missing, unreadable (truncated, foreign) or stale, the reason logged so the rebuild that follows is explained."""
    if not path.is_file():
        return None
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated or foreign file: rebuild
        log.warning(
            "%s %s is unreadable (%s: %s); rebuilding it",
            what,
            path,
            type(e).__name__,
            (str(e).strip().splitlines() or [""])[0],
        )
        return None
    stored = cache.get("meta", {}) if isinstance(cache, dict) else {}
    diff = sorted(k for k in meta if stored.get(k) != meta[k])
    if diff:
        log.warning("%s %s is stale (%s changed); rebuilding it", what, path, ", ".join(diff))
        return None
    return cache
