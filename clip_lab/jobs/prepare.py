"""`python -m clip_lab prepare`: Hugging Face parquet shards -> image files and Karpathy's json, converted once.

A dataset downloaded as parquet shards becomes the layout `fit`, `test` and every other job read (see
`clip_lab.data.parquet`)."""

from __future__ import annotations

from pathlib import Path

from clip_lab.data.parquet import convert_parquet
from clip_lab.options import JobParser

READ_WITH = {
    "flickr8k": "-c configs/datasets/flickr8k.yaml --data.dataset flickr8k_karpathy",
    "flickr30k": "-c configs/datasets/flickr30k.yaml",
    "coco": "-c configs/datasets/coco_karpathy.yaml",
}


def main(argv: list[str] | None = None) -> Path:
    parser = JobParser(prog="python -m clip_lab prepare", description=__doc__)
    parser.add_argument("--parquet", required=True, help="a .parquet file or a folder of shards (searched recursively)")
    parser.add_argument("--dataset", required=True, choices=sorted(READ_WITH), help="what the shards hold")
    parser.add_argument("--out", required=True, help="folder for the images and dataset_<dataset>.json")
    args = parser.parse_args(argv)
    ann = convert_parquet(args.parquet, args.dataset, args.out)
    print(
        f"wrote {ann} and its images; train on it with:\n  python -m clip_lab fit -c configs/coco.yaml "
        f"{READ_WITH[args.dataset]} --data.data_root {args.out} --run {args.dataset}"
    )
    return ann
