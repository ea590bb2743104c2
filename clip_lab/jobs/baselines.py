"""`python -m clip_lab baselines`: the reference rows of a results table, under the same test protocol as `test`.

- pretrained: the model named by `data.text_model` itself, zero-shot: its own image tower (with its own
  preprocessing) and text tower, both frozen (the caption caches `fit` uses are its text tower's embeddings). Any
  family clip_lab reads: CLIP, SigLIP, BLIP, ALIGN (`hf:<id or folder>`) or OpenCLIP (`open_clip:<arch>:<tag>`).
- linear head / MLP head: both towers frozen, the image tower's pooled features cached once per split, only a
  projection head trained with InfoNCE (BLIP-style head-only fine-tuning): a linear map (the form of the model's own
  image projection, learned again) or the lab's 2-layer GELU head. Several seeds each; the epoch with the best
  validation R-sum is tested.

Takes the same configs as `fit` (only their `data:` section is read), so dataset, splits, caches and protocol are
those of the trained runs it is compared with. Results: `results/<run>.json` and `results/<run>.md`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from clip_lab.data.datamodule import RetrievalData
from clip_lab.data.feature_cache import ensure_feature_cache
from clip_lab.errors import ClipLabError
from clip_lab.eval.scoring import score_split
from clip_lab.eval.seeds import summarize
from clip_lab.files import CONFIGS, save_json, save_text
from clip_lab.jobs.infer import config_settings
from clip_lab.models.image import HEADS
from clip_lab.options import JobParser
from clip_lab.report.tables import baselines_markdown
from clip_lab.train.heads import Pairs, train_head

log = logging.getLogger(__name__)

PRETRAINED = "pretrained (zero-shot)"
LABELS = {"linear": "linear head", "mlp": "MLP head"}


def data_settings(configs: list[str], overrides: list[str]) -> dict[str, Any]:
    """The `data:` section of stacked YAML configs, later files winning, then `--data.KEY VALUE` overrides."""
    settings = config_settings(configs)
    if len(overrides) % 2:
        raise ClipLabError(f"overrides come in pairs (--data.KEY VALUE), got {' '.join(overrides)}")
    for key, value in zip(overrides[::2], overrides[1::2]):
        if not key.startswith("--data."):
            raise ClipLabError(f"only data options can be overridden here (--data.KEY VALUE), not {key}")
        settings[key.removeprefix("--data.")] = yaml.safe_load(value)  # as the CLI reads values: 5 -> int, null -> None
    return settings


def build_data(settings: dict[str, Any]) -> RetrievalData:
    try:
        return RetrievalData(**settings)
    except TypeError as e:  # an unknown key in the data section
        raise ClipLabError(f"data settings: {e} (python -m clip_lab fit --help lists the data options)") from None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = JobParser(
        prog="python -m clip_lab baselines", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-c",
        "--config",
        action="append",
        default=None,
        help="config(s) of the runs to compare with, stacked in order (default: configs/coco.yaml)",
    )
    parser.add_argument("--run", default="baselines", help="the table's name: results/<run>.json and .md")
    parser.add_argument(
        "--heads",
        nargs="*",
        default=["linear", "mlp"],
        choices=HEADS,
        help="heads to train (none: the zero-shot row alone)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per head")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.1)
    parser.add_argument("--hidden", type=int, default=2048, help="hidden width of the MLP head")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("overrides", nargs="*", help="after '--': data options, e.g. -- --data.cache_dir cache")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1:
        raise ClipLabError("--seeds and --epochs must be at least 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = build_data(data_settings(args.config or [str(CONFIGS / "coco.yaml")], args.overrides))
    hp = data.hparams
    data.prepare_data()  # image and caption caches of every split
    features = {
        name: ensure_feature_cache(
            data.split(name),
            hp.cache_dir,
            hp.cache_image_size,
            hp.text_model,
            device,
            workers=hp.num_workers,
            max_bad=hp.max_bad_images,
        )
        for name in data.split_names()
    }

    def view(stage: str, key: str) -> torch.Tensor:  # the evaluated images' rows, in evaluation order
        rows = torch.from_numpy(data.eval_images(stage))
        return features[data.eval_split(stage)][key][rows].float().to(device)

    results = {PRETRAINED: [score_split(data, "test", view("test", "embeds"))]}  # CLIP's own image embedding
    details: dict[str, dict[str, list]] = {PRETRAINED: {}}
    split = data.split(hp.train_split)
    train = Pairs(
        features[hp.train_split]["pooled"].float().to(device),
        data.caption_embeddings(hp.train_split).float().to(device),
        split.caption_start,
        data.usable_images(hp.train_split),
    )
    val_features, test_features = view("val", "pooled"), view("test", "pooled")
    for kind in args.heads:
        label = LABELS[kind]
        results[label], details[label] = [], {"best_epoch": [], "seconds": [], "history": []}
        for seed in range(args.seeds):
            run = train_head(
                kind,
                train,
                lambda m: val_rsum(data, m, val_features),
                args.epochs,
                args.batch_size,
                args.lr,
                args.weight_decay,
                args.hidden,
                seed,
            )
            with torch.no_grad():
                results[label].append(score_split(data, "test", run.model(test_features)))
            for key, value in (("best_epoch", run.best_epoch), ("seconds", run.seconds), ("history", run.history)):
                details[label][key].append(value)
            log.info(
                "%s seed %d: best epoch %d, %.1f s, test R-sum %.1f",
                label,
                seed,
                run.best_epoch,
                run.seconds,
                100 * results[label][-1]["rsum"],
            )

    summary = summarize(results, base=PRETRAINED, exact=[PRETRAINED])
    order = list(results)
    test = results[PRETRAINED][0]
    out = {
        "dataset": hp.dataset,
        "split": hp.test_split,
        "model": hp.text_model,
        "image_tower": {k: features[hp.test_split]["meta"].get(k) for k in ("input_size", "preprocessing")},
        "protocol": data.protocol_record(int(test["n_images"]), int(test["n_captions"])),
        "feature_dim": int(train.features.shape[1]),
        "embed_dim": int(train.captions.shape[1]),
        "heads": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "hidden": args.hidden,
            "seeds": list(range(args.seeds)),
        },
        "base": PRETRAINED,
        "order": order,
        "config": args.config,
        "overrides": args.overrides,
        "variants": {v: summary[v] | details[v] for v in order},
    }
    path = Path(args.results_dir) / f"{args.run}.json"
    save_json(out, path)
    table = baselines_markdown(out)
    save_text(table, path.with_suffix(".md"))
    print(f"\n{table}\nwritten: {path} and {path.with_suffix('.md')}")
    return out


def val_rsum(data: RetrievalData, model: torch.nn.Module, features: torch.Tensor) -> float:
    """The validation R-sum of a head: the score that picks its best epoch."""
    with torch.no_grad():
        return score_split(data, "val", model(features))["rsum"]
