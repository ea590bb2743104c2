"""Hugging Face datasets in parquet (image bytes in a struct column, captions in a list or `caption_0..N` columns) ->
image files and Karpathy's json, once, so that every reader, cache and thumbnail works on them unchanged.

The image bytes are written as they are stored (no re-encoding: the files are the dataset's own JPEGs), into the
layout the registry reads for `dataset`: `dataset_<name>.json` beside the image folder Karpathy's readers expect.
The json is written last, atomically, holding what it was converted from: a run that stopped half way leaves no
json, and the next `prepare` starts over.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clip_lab.errors import ClipLabError
from clip_lab.files import save_json

log = logging.getLogger(__name__)

IMAGE_FOLDER = {"flickr8k": "Flicker8k_Dataset", "flickr30k": "flickr30k-images"}  # coco: train2014/ and val2014/
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "restval": "restval",
}
CAPTION_COLUMNS = ("caption", "captions", "sentences", "raw", "text", "sentences_raw")
NAME_COLUMNS = ("filename", "file_name", "image_name", "image_path", "img_path")
SPLIT_IN_NAME = re.compile(r"(?:^|[-_./])(train|training|val|valid|validation|dev|test|restval)(?:[-_.]|$)")
PREPARED = 1  # bump when the written layout changes


def _pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ClipLabError("reading parquet needs pyarrow: pip install -r requirements.txt") from e
    return pq


def parquet_files(source: Path) -> list[Path]:
    """The `.parquet` shards under `source` (a file or a folder, searched recursively), sorted."""
    files = [source] if source.is_file() else sorted(source.rglob("*.parquet"))
    if not files:
        raise ClipLabError(
            f"no .parquet files under {source}: pass the folder the Hugging Face dataset was downloaded "
            "to (e.g. `hf download nlphuji/flickr30k --repo-type dataset --local-dir DIR`)"
        )
    return files


def _columns(schema: Any, path: Path) -> tuple[str, list[str], str | None, str | None]:
    """(image column, caption columns, split column, file name column) of a shard, or one line saying what is there."""
    import pyarrow as pa

    names = schema.names
    image = next(
        (
            n
            for n in names
            if pa.types.is_struct(schema.field(n).type) and "bytes" in [f.name for f in schema.field(n).type]
        ),
        None,
    )
    image = image or next((n for n in names if pa.types.is_binary(schema.field(n).type) and "image" in n.lower()), None)
    listed = [n for n in CAPTION_COLUMNS if n in names and pa.types.is_list(schema.field(n).type)]
    numbered = sorted((n for n in names if re.fullmatch(r"captions?_\d+", n)), key=lambda n: int(n.rsplit("_", 1)[1]))
    captions = listed[:1] or numbered or [n for n in CAPTION_COLUMNS if n in names][:1]
    if image is None or not captions:
        raise ClipLabError(
            f"{path}: no image column (a struct with bytes) and caption column(s) (a list of strings or "
            f"caption_0..N) among its columns {', '.join(names)}"
        )
    split = "split" if "split" in names else None
    name = next((n for n in NAME_COLUMNS if n in names), None)
    return image, captions, split, name


def _split_of_file(path: Path) -> str | None:
    match = SPLIT_IN_NAME.search(path.name.lower()) or SPLIT_IN_NAME.search(path.parent.name.lower())
    return SPLIT_NAMES[match.group(1)] if match else None


def _suffix(data: bytes) -> str:
    return ".png" if data[:8] == b"\x89PNG\r\n\x1a\n" else ".jpg"


def rows(files: list[Path]) -> Iterator[tuple[dict[str, Any], Path, tuple[str, list[str], str | None, str | None]]]:
    """Every row of every shard (a dict per row, read a batch at a time), with its shard and the shard's columns."""
    pq = _pyarrow()
    for path in files:
        shard = pq.ParquetFile(path)
        columns = _columns(shard.schema_arrow, path)
        wanted = [c for c in (columns[0], *columns[1], columns[2], columns[3]) if c]
        for batch in shard.iter_batches(batch_size=256, columns=wanted):
            for row in batch.to_pylist():
                yield row, path, columns


def convert_parquet(source: str | Path, dataset: str, out: str | Path) -> Path:
    """Write the parquet dataset under `source` as `dataset`'s Karpathy layout under `out`; the json's path.

    Split: a `split` column, else the shard's file name (`train-00000-of-00004.parquet`, `validation/...`). Image
    file: a file-name column or the image struct's `path`, else `<row>.jpg`; the same name twice is one image (its
    captions joined). Rows without image bytes or captions are skipped and counted.
    """
    if dataset not in ("flickr8k", "flickr30k", "coco"):
        raise ClipLabError(f"prepare --dataset {dataset}: use flickr8k, flickr30k or coco")
    source, out = Path(source), Path(out)
    files = parquet_files(source)
    ann = out / f"dataset_{dataset}.json"
    stamp = {
        "version": PREPARED,
        "files": [[str(f.relative_to(source) if source.is_dir() else f.name), f.stat().st_size] for f in files],
    }
    if ann.is_file():
        import json

        try:
            if json.loads(ann.read_text()).get("clip_lab_prepared_from") == stamp:
                log.info("prepare: %s is already converted from these shards", ann)
                return ann
        except ValueError:
            pass
    images: dict[str, dict[str, Any]] = {}
    defects: Counter = Counter()
    for k, (row, path, (image_col, caption_cols, split_col, name_col)) in enumerate(rows(files)):
        cell = row[image_col]
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        texts = row[caption_cols[0]] if len(caption_cols) == 1 else [row[c] for c in caption_cols]
        texts = [texts] if isinstance(texts, str) else [t for t in (texts or []) if isinstance(t, str)]
        split_value = str(row[split_col]).lower() if split_col and row.get(split_col) is not None else None
        split = SPLIT_NAMES.get(split_value or "") if split_value else _split_of_file(path)
        if not data or not texts:
            defects["rows_without_image_or_captions"] += 1
            continue
        if split is None:
            raise ClipLabError(
                f"{path}: no split column and no split in the file name (train, validation, test): "
                "name the shards by split, or add a split column"
            )
        name = (row.get(name_col) if name_col else None) or (cell.get("path") if isinstance(cell, dict) else None)
        name = Path(str(name)).name if name else f"{k:08d}{_suffix(data)}"
        if name in images:
            images[name]["sentences"] += texts
            defects["repeated_images"] += 1
            continue
        folder = IMAGE_FOLDER.get(dataset) or ("train2014" if split == "train" else "val2014")
        target = out / folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)  # the dataset's own bytes: no re-encoding
        images[name] = {
            "filename": name,
            "split": split,
            "sentences": texts,
            **({"filepath": folder} if dataset == "coco" else {}),
        }
    if not images:
        raise ClipLabError(f"{source}: no row with image bytes and captions")
    entries, sentid = [], 0
    for imgid, entry in enumerate(images.values()):
        sentences = [
            {"raw": t, "tokens": t.split(), "imgid": imgid, "sentid": sentid + j}
            for j, t in enumerate(entry["sentences"])
        ]
        sentid += len(sentences)
        entries.append({**entry, "imgid": imgid, "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
    save_json(
        {"dataset": dataset, "images": entries, "clip_lab_prepared_from": stamp, "clip_lab_defects": dict(defects)}, ann
    )
    counts = Counter(e["split"] for e in entries)
    log.info(
        "prepare: %d images (%s) from %d shards -> %s%s",
        len(entries),
        ", ".join(f"{s} {n}" for s, n in sorted(counts.items())),
        len(files),
        out,
        "; " + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in defects.items()) if defects else "",
    )
    return ann
