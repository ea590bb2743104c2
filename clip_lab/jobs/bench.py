"""`python -m clip_lab bench`: training-step ceiling, end-to-end fit, a naive pipeline, cache builds, retrieval.

Everything runs on generated data in one process, so one command on one machine gives one comparable table:
  ceiling   the bare training step (same model, batch, precision, compile) on tensors already on the device;
  fit       Lightning `fit` through the real datamodule (image cache, device-side augmentation) on >= 20,000
            generated JPEGs of ~640x480, timed after a warm-up epoch;
  naive     the same JPEGs through PIL + torchvision transforms in DataLoader workers, fp32, `loss.item()` per step;
  caption cache, image cache, and a val2014-scale retrieval evaluation;
  features  the frozen CLIP image tower (ViT-B/32 shape, random weights) over the image cache: the feature cache;
  heads     head-only training (linear and MLP heads) on cached features at COCO Karpathy train size;
  text      (only with `--only text`) the training step with a trained text encoder (LSTM, DistilBERT shape)
            against the cached default;
  index     (only with `--only index`: it needs faiss) the search index: HNSW recall against exact search, latency
            and throughput on the demo run's galleries and on 100,000 synthetic 512-d vectors (index_bench.py);
  serve     (only with `--only serve`) the search server over HTTP on loopback: per-request latency with its
            Server-Timing stages and throughput of 16 clients, on the demo run's gallery and on 40,504 synthetic
            images (serve_bench.py).
`--small` shrinks every size so the CPU tests can run it. Data is generated only for the parts that read it.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from clip_lab.data.synthetic import coco_like_captions, make_clip_text_model
from clip_lab.errors import ClipLabError
from clip_lab.files import atomic_path, save_json
from clip_lab.options import JobParser
from clip_lab.train.runstats import machine

log = logging.getLogger(__name__)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- caption cache ------------------------------------------------------------------------------------------------
def clip_text_b32(root: Path, captions: list[str], small: bool) -> Path:
    """The folder of a CLIP text tower of ViT-B/32's shape (`--small`: a tiny one) under `root`, written once with
    a tokenizer trained on `captions` (make_clip_text_model reads the first 20,000)."""
    model_dir = root / ("clip_text_b32_small" if small else "clip_text_b32")
    if not (model_dir / "config.json").is_file():
        make_clip_text_model(model_dir, captions, small)
    return model_dir


def bench_caption_cache(root: Path, n: int, device: torch.device, small: bool) -> dict[str, Any]:
    from clip_lab.data.caption_cache import build_caption_cache
    from clip_lab.data.split import CaptionedSplit
    from clip_lab.models.text import TextEncoder

    captions = coco_like_captions(n)
    model_dir = clip_text_b32(root, captions, small)
    t0 = time.perf_counter()
    encoder = TextEncoder(str(model_dir), 77).to(device)
    load_s = time.perf_counter() - t0
    encoder.encode(captions[:4096])  # warm-up: CUDA context, cuBLAS handles, kernels
    _sync(device)
    split = CaptionedSplit(
        name="bench",
        annotation_file=root / "none",
        image_dir=root,
        image_ids=np.arange(-(-n // 5)),
        file_names=[],
        caption_ids=np.arange(n),
        caption_image=np.arange(n) // 5,
        captions=captions,
    )
    tokens = np.mean([len(t) for t in encoder.tokenizer(captions[:10000])["input_ids"]])
    t0 = time.perf_counter()
    build_caption_cache(split, encoder, root / "bench_captions.pt", {"bench": True})
    dt = time.perf_counter() - t0
    return {
        "captions": n,
        "mean_tokens": round(float(tokens), 1),
        "seconds": dt,
        "captions_per_s": n / dt,
        "model_load_s": load_s,
        "model": "CLIPTextModelWithProjection " + ("(small)" if small else "ViT-B/32 shape"),
    }


# -- the bare training step ---------------------------------------------------------------------------------------
def bench_ceiling(args: argparse.Namespace, device: torch.device, text_encoder: str | None = None) -> dict[str, Any]:
    """Images/s of the bare training step; `text_encoder` (as `model.text_encoder`): captions encoded in the step
    from token rows of 32 positions holding COCO's ~14 tokens, instead of cached embeddings."""
    from clip_lab.train.module import ClipLab

    module = ClipLab(args.backbone, weights=None, embed_dim=512, compile=args.compile, text_encoder=text_encoder).to(
        device
    )
    module.to_fast_layout(args.compile)
    optimizer = module.build_optimizer()
    g = torch.Generator(device).manual_seed(0)

    def text() -> torch.Tensor:
        if text_encoder is None:
            return F.normalize(torch.randn(args.batch_size, 512, generator=g, device=device), dim=-1).half()
        vocab = module.text_tower.body.get_submodule(
            "embeddings.word_embeddings" if text_encoder != "lstm" else "embedding"
        ).num_embeddings
        tokens = torch.randint(2, vocab, (args.batch_size, 32), generator=g, device=device, dtype=torch.int32)
        lengths = torch.randint(8, 21, (args.batch_size, 1), generator=g, device=device)  # COCO: ~14 on average
        return tokens * (torch.arange(32, device=device) < lengths)

    inputs = [
        (
            torch.randint(
                0,
                256,
                (args.batch_size, 3, args.image_size, args.image_size),
                generator=g,
                device=device,
                dtype=torch.uint8,
            ).contiguous(memory_format=torch.channels_last),
            text(),
        )
        for _ in range(3)
    ]  # a few input sets: never time one buffer over and over
    max_log_scale = math.log(module.hparams.max_logit_scale)

    def step(i: int) -> None:
        images, text = inputs[i % len(inputs)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, _ = module.train_loss(images, text)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            module.logit_scale.clamp_(max=max_log_scale)

    t0 = time.perf_counter()
    for i in range(args.warmup_steps):
        step(i)
    _sync(device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i)
    _sync(device)
    dt = time.perf_counter() - t0
    return {"steps": args.steps, "images_per_s": args.steps * args.batch_size / dt, "warmup_and_compile_s": warm_s}


def bench_text(args: argparse.Namespace, root: Path, device: torch.device) -> dict[str, Any]:
    """The bare training step with each text side: cached frozen-CLIP embeddings, the LSTM, and a transformer of
    distilbert-base-uncased's shape (6 layers, 768 wide, 30,522 tokens; random weights) fine-tuned in the step."""
    from clip_lab.data.synthetic import make_bert_model

    bert = root / ("bert_small" if args.small else "distilbert_shape")
    if not (bert / "config.json").is_file():
        make_bert_model(
            bert,
            width=64 if args.small else 768,
            layers=2 if args.small else 6,
            vocab_size=None if args.small else 30522,
        )
    out = {}
    for name, encoder in (("cached", None), ("lstm", "lstm"), ("distilbert", str(bert))):
        out[name] = bench_ceiling(args, device, text_encoder=encoder)
        _free(device)
    return out


# -- end-to-end fit, then test at val scale -----------------------------------------------------------------------
class Throughput(Callback):
    """Images/s from the start of epoch `skip` to the end of training (synchronized only there), and the number of
    host synchronizations CUDA reports over steps `window` of the last epoch (fetch, transfer, augmentation, step,
    logging: everything a training step does)."""

    def __init__(self, skip: int, batch_size: int, window: tuple[int, int]) -> None:
        self.skip, self.batch_size, self.window = skip, batch_size, window
        self.images, self.t0, self.seconds, self.syncs, self.sync_steps = 0, 0.0, 0.0, 0, 0
        self._record: Any = None
        self._caught: list = []

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == self.skip:
            _sync(pl_module.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
        if trainer.current_epoch >= self.skip:
            self.images += self.batch_size
        if pl_module.device.type != "cuda" or trainer.current_epoch != trainer.max_epochs - 1:
            return
        if i == self.window[0]:
            self._record = warnings.catch_warnings(record=True)
            self._caught = self._record.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        elif i == self.window[1] and self._record is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._record.__exit__(None, None, None)
            self.syncs = sum("called a synchronizing CUDA operation" in str(w.message) for w in self._caught)
            self.sync_messages = sorted({str(w.message)[:200] + f" @ {w.filename}:{w.lineno}" for w in self._caught})
            self.sync_steps = self.window[1] - self.window[0]
            self._record = None

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        _sync(pl_module.device)
        self.seconds = time.perf_counter() - self.t0


def bench_datamodule(args: argparse.Namespace, data_root: Path) -> Any:
    from clip_lab.data.datamodule import RetrievalData

    return RetrievalData(
        data_root=str(data_root),
        text_model=str(data_root / "clip_tiny"),
        max_length=32,
        cache_dir=str(data_root / "cache"),
        image_size=args.image_size,
        cache_image_size=args.cache_image_size,
        crop_scale=0.35,
        flip=0.5,
        jitter=0.4,  # the augmentation ablation's views: the costlier case
        batch_size=args.batch_size,
        eval_batch_size=1024,
        num_workers=args.workers,
        val_images=0,
    )


def bench_loader(args: argparse.Namespace, data_root: Path, device: torch.device) -> dict[str, Any]:
    """The data path alone: batches from the image cache to the device, augmented, no model: what it could feed."""
    from clip_lab.data.augment import augment
    from clip_lab.data.image_cache import image_cache_paths
    from clip_lab.data.loader import CachedBatchLoader
    from clip_lab.data.sampling import PairBatchSampler

    dm = bench_datamodule(args, data_root)
    dm.prepare_data()
    split = dm.split("train2014")
    sampler = PairBatchSampler(split.caption_start, args.batch_size, "image", drop_last=True)
    path, _ = image_cache_paths(data_root / "cache", split, args.cache_image_size)
    loader = CachedBatchLoader(path, dm.caption_embeddings("train2014"), sampler, device, threads=args.workers)
    images = 0
    for epoch in range(2):  # the first epoch warms the page cache and the pinned buffers
        sampler.set_epoch(epoch)
        _sync(device)
        t0 = time.perf_counter()
        for batch in loader:
            augment(batch[0], args.image_size, crop_scale=0.35, flip=0.5, jitter=0.4)
            images += len(batch[0]) if epoch else 0
        _sync(device)
    return {"images_per_s": images / (time.perf_counter() - t0)}


def bench_fit(args: argparse.Namespace, data_root: Path, device: torch.device) -> dict[str, Any]:
    import lightning as L

    from clip_lab.train.module import ClipLab

    L.seed_everything(0, verbose=False)
    dm = bench_datamodule(args, data_root)
    module = ClipLab(args.backbone, weights=None, embed_dim=dm.embed_dim, compile=args.compile)
    steps_per_epoch = args.n_train // args.batch_size
    window = (min(5, steps_per_epoch - 2), min(25, steps_per_epoch - 1))
    meter = Throughput(skip=1, batch_size=args.batch_size, window=window)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        max_epochs=args.epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[meter],
        default_root_dir=str(data_root / "run"),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(does not have many workers|number of training batches).*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning-internal
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        fit_s = time.perf_counter() - t0
        train_loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
        t0 = time.perf_counter()
        metrics = trainer.test(module, datamodule=dm, verbose=False)[0]
        test_s = time.perf_counter() - t0
    out = {
        "images_per_s": meter.images / meter.seconds,
        "timed_epochs": args.epochs - 1,
        "timed_images": meter.images,
        "wall_s_all_epochs": fit_s,
        "host_syncs": meter.syncs,
        "host_sync_sites": getattr(meter, "sync_messages", []),
        "sync_window_steps": meter.sync_steps,
        "test_images": int(metrics["test/n_images"]),
        "test_captions": int(metrics["test/n_captions"]),
        "test_s": test_s,
        "final_train_loss": train_loss,
    }
    return out


# -- the naive pipeline -------------------------------------------------------------------------------------------
class NaiveImages(torch.utils.data.Dataset):
    """What most course submissions do: PIL decode + torchvision transforms per image in the DataLoader workers."""

    def __init__(self, paths: list[Path], text: torch.Tensor, size: int) -> None:
        from torchvision import transforms as T

        self.paths, self.text = paths, text
        self.transform = T.Compose(
            [
                T.RandomResizedCrop(size),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(mean=[0.0] * 3, std=[1 / 255] * 3),  # back to the 0-255 range the shared model normalizes
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB")), self.text[i]


def bench_naive(args: argparse.Namespace, data_root: Path, device: torch.device) -> dict[str, Any]:
    from clip_lab.data.coco import load_coco_split
    from clip_lab.train.module import ClipLab

    split = load_coco_split(data_root, "train2014")
    paths = [split.image_path(i) for i in range(len(split.file_names))]
    text = F.normalize(torch.randn(len(paths), 512), dim=-1)
    loader = torch.utils.data.DataLoader(
        NaiveImages(paths, text, args.image_size),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=True,
    )
    module = ClipLab(args.backbone, weights=None, embed_dim=512).to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)

    def forever() -> Any:
        while True:
            yield from loader

    batches = forever()
    t0 = time.perf_counter()
    for step in range(args.naive_warmup + args.naive_steps):
        if step == args.naive_warmup:
            _sync(device)
            t0 = time.perf_counter()
        images, captions = next(batches)
        images, captions = images.to(device), captions.to(device)
        loss, _ = module.train_loss(images, captions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the per-step progress-bar update a notebook loop does
    _sync(device)
    dt = time.perf_counter() - t0
    return {"steps": args.naive_steps, "images_per_s": args.naive_steps * args.batch_size / dt}


# -- retrieval ----------------------------------------------------------------------------------------------------
def bench_retrieval(n_images: int, n_captions: int, device: torch.device) -> dict[str, Any]:
    from clip_lab.eval.metrics import embedding_retrieval_metrics

    g = torch.Generator(device).manual_seed(0)
    image_emb = F.normalize(torch.randn(n_images, 512, generator=g, device=device), dim=-1)
    caption_image = torch.arange(n_captions, device=device) % n_images  # 5+ captions per image, like val2014
    caption_emb = F.normalize(
        image_emb[caption_image] + torch.randn(n_captions, 512, generator=g, device=device), dim=-1
    ).half()
    embedding_retrieval_metrics(image_emb[:1000], caption_emb[:5000], caption_image[:5000] % 1000)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    metrics = embedding_retrieval_metrics(image_emb, caption_emb, caption_image)
    dt = time.perf_counter() - t0
    return {"images": n_images, "captions": n_captions, "seconds": dt, "t2i_R@1": metrics["t2i_R@1"]}


# -- frozen features and head-only training ---------------------------------------------------------------------------
def bench_features(args: argparse.Namespace, data_root: Path, device: torch.device) -> dict[str, Any]:
    """Feature-cache build over the train image cache with a CLIP image tower of ViT-B/32's shape (random weights)."""
    from clip_lab.data import feature_cache, image_cache
    from clip_lab.data.coco import load_coco_split
    from clip_lab.data.synthetic import make_clip_model
    from clip_lab.models.vision import HFImageTower

    model = data_root / "clip_vit_b32_shape"
    if not (model / "config.json").is_file():
        shape = (
            dict(image_size=64, patch_size=8, vision_width=128, vision_layers=2)
            if args.small
            else dict(image_size=224, patch_size=32, vision_width=768, vision_layers=12)
        )
        make_clip_model(model, projection_dim=512, **shape)
    split = load_coco_split(data_root, "train2014")
    cache = data_root / "cache"
    images = image_cache.ensure_image_cache(cache, split, args.cache_image_size, device, args.workers)
    tower = HFImageTower(str(model)).to(device)
    meta = feature_cache.expected_meta(split, str(model), args.cache_image_size)
    path = feature_cache.feature_cache_path(cache, split, str(model), args.cache_image_size)
    _sync(device)
    t0 = time.perf_counter()
    feature_cache.build_feature_cache(images, tower, path, meta)
    dt = time.perf_counter() - t0
    return {
        "images": len(images),
        "input": tower.input_size,
        "feature_dim": tower.feature_dim,
        "seconds": dt,
        "images_per_s": len(images) / dt,
    }


def bench_heads(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Seconds per epoch of head-only training (with its validation scoring) at COCO Karpathy train size."""
    from clip_lab.eval.metrics import embedding_retrieval_metrics
    from clip_lab.train.heads import Pairs, train_head

    n, n_val, dim = (2000, 500, 64) if args.small else (113287, 5000, 768)
    g = torch.Generator(device).manual_seed(0)
    w = torch.randn(dim, 512, generator=g, device=device) / dim**0.5

    def world(k: int) -> tuple[Pairs, torch.Tensor]:
        x = torch.randn(k, dim, generator=g, device=device)
        owner = torch.arange(k, device=device).repeat_interleave(5)
        text = F.normalize(x[owner] @ w + torch.randn(len(owner), 512, generator=g, device=device), dim=-1)
        return Pairs(x, text, np.arange(0, 5 * k + 1, 5), np.arange(k)), owner

    train, _ = world(n)
    val, owner = world(n_val)
    score = lambda m: embedding_retrieval_metrics(m(val.features), val.captions, owner)["rsum"]  # noqa: E731
    out: dict[str, Any] = {"images": n, "captions": 5 * n, "feature_dim": dim, "val_images": n_val}
    for kind in ("linear", "mlp"):
        run = train_head(kind, train, lambda m: _no_grad(score, m), epochs=args.head_epochs, seed=0)
        out[kind] = {
            "epochs": args.head_epochs,
            "seconds": run.seconds,
            "seconds_per_epoch": run.seconds / args.head_epochs,
            "val_rsum": run.history[run.best_epoch]["val_rsum"],
        }
    return out


def _no_grad(fn: Callable[[Any], float], *args: Any) -> float:
    with torch.no_grad():
        return fn(*args)


# -- the whole run ------------------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = JobParser(
        prog="python -m clip_lab bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--root", default="cache/bench", help="where the generated data and its caches go (reused)")
    p.add_argument("--out", default="results/bench/bench.json", help="the JSON table (a .md table goes beside it)")
    p.add_argument("--small", action="store_true", help="CPU-sized everything, for smoke tests")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="loader/decoder processes")
    p.add_argument("--no_compile", dest="compile", action="store_false", help="eager training step")
    p.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="run only these parts: caption_cache image_cache ceiling loader fit naive retrieval features "
        "heads index serve text (index, serve and text run only when named)",
    )
    for name in (
        "n_train",
        "n_val",
        "captions",
        "epochs",
        "steps",
        "naive_steps",
        "batch_size",
        "head_epochs",
        "index_n",
        "index_queries",
        "serve_images",
        "serve_requests",
        "serve_load_requests",
    ):
        p.add_argument(f"--{name}", type=int, default=None, help="override the preset")
    index = p.add_argument_group("index and serve parts")
    index.add_argument(
        "--ckpt_path",
        default="results/demo/checkpoints/best.ckpt",
        help="checkpoint whose test-split galleries are benchmarked (skipped with a note when missing)",
    )
    index.add_argument("--ef_search", type=int, nargs="+", default=[16, 32, 64, 128, 256], help="HNSW efSearch values")
    index.add_argument("--hnsw_m", type=int, default=32, help="HNSW graph degree (FAISS's M)")
    index.add_argument("--ef_construction", type=int, default=200, help="HNSW efConstruction")
    args = p.parse_args(argv)
    # full size: 20,000 train JPEGs of COCO's sizes, a val split as large as val2014 (the --small data uses `sides`)
    sizes = dict(
        n_train=20000,
        n_val=40504,
        sides=(480, 640),
        batch_size=256,
        image_size=224,
        cache_image_size=256,
        backbone="resnet50",
        epochs=4,
        warmup_steps=15,
        steps=60,
        naive_warmup=5,
        naive_steps=30,
        captions=300000,
        retrieval_images=40504,
        retrieval_captions=202654,
        head_epochs=5,
        index_n=100000,
        index_dim=512,
        index_queries=1000,
        serve_images=40504,  # val2014's size
        serve_requests=200,  # timed sequential requests per gallery
        serve_load_requests=800,  # requests per gallery under load, shared by 16 clients
    )
    if args.small:
        sizes.update(
            n_train=256,
            n_val=128,
            sides=(96, 160),
            batch_size=32,
            image_size=64,
            cache_image_size=72,
            backbone="resnet18",
            epochs=2,
            warmup_steps=1,
            steps=3,
            naive_warmup=1,
            naive_steps=2,
            captions=3000,
            retrieval_images=500,
            retrieval_captions=2500,
            head_epochs=2,
            index_n=3000,
            index_dim=64,
            index_queries=100,
            serve_images=2000,
            serve_requests=40,
            serve_load_requests=160,
        )
        args.compile = False
        args.workers = min(args.workers, 2)
    for k, v in sizes.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    return args


def table(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measure, value, note) rows, including the ratios the targets are stated in."""
    r = results
    rows = []
    if "ceiling" in r:
        rows.append(
            (
                "training-step ceiling (synthetic tensors on device)",
                f"{r['ceiling']['images_per_s']:,.0f} img/s",
                f"compile={r['config']['compile']}, batch {r['config']['batch_size']}",
            )
        )
    if "fit" in r:
        f = r["fit"]
        note = (
            f"{f['timed_epochs']} epochs after a warm-up epoch; "
            f"{f['host_syncs']} host syncs in {f['sync_window_steps']} steps"
        )
        if "ceiling" in r:
            note = f"{f['images_per_s'] / r['ceiling']['images_per_s']:.2f} x ceiling; " + note
        rows.append(("end-to-end fit (image cache + GPU augmentation)", f"{f['images_per_s']:,.0f} img/s", note))
        rows.append(
            (
                f"test from caches ({f['test_images']:,} images, {f['test_captions']:,} captions)",
                f"{f['test_s']:.1f} s",
                "embed the gallery from the image cache + all retrieval metrics",
            )
        )
    if "loader" in r:
        rows.append(
            (
                "data path alone (cache -> device -> augmentation)",
                f"{r['loader']['images_per_s']:,.0f} img/s",
                "what the loader could feed a model",
            )
        )
    if "naive" in r:
        note = "PIL + torchvision transforms in workers, fp32"
        if "fit" in r:
            note = f"fit is {r['fit']['images_per_s'] / r['naive']['images_per_s']:.2f} x this; " + note
        rows.append(("naive pipeline on the same JPEGs", f"{r['naive']['images_per_s']:,.0f} img/s", note))
    if "caption_cache" in r:
        c = r["caption_cache"]
        rows.append(
            (
                "caption cache build",
                f"{c['captions_per_s']:,.0f} captions/s",
                f"{c['captions']:,} captions, {c['mean_tokens']} tokens each, {c['model']}",
            )
        )
    if "image_cache" in r:
        c = r["image_cache"]
        rows.append(
            (
                "image cache build",
                f"{c['images_per_s']:,.0f} img/s",
                f"{c['images']:,} JPEGs of {c['shapes']} -> {c['size']} px, {c['decoder']}",
            )
        )
    if "features" in r:
        c = r["features"]
        rows.append(
            (
                "feature cache build (frozen CLIP image tower)",
                f"{c['images_per_s']:,.0f} img/s",
                f"{c['images']:,} cached images -> {c['input']} px, ViT-B/32 shape, random weights",
            )
        )
    if "heads" in r:
        c = r["heads"]
        for kind in ("linear", "mlp"):
            rows.append(
                (
                    f"head-only training, {kind} head",
                    f"{c[kind]['seconds_per_epoch']:.2f} s/epoch",
                    f"{c['images']:,} images x {c['feature_dim']}-d features, {c['captions']:,} captions, "
                    f"batch 256, validation on {c['val_images']:,} images included",
                )
            )
    if "text" in r:
        c = r["text"]
        for name, what in (
            ("cached", "cached frozen-CLIP embeddings (the default)"),
            ("lstm", "word-level BiLSTM"),
            ("distilbert", "DistilBERT shape, fine-tuned"),
        ):
            rows.append(
                (
                    f"training step, text side: {what}",
                    f"{c[name]['images_per_s']:,.0f} img/s",
                    f"{c[name]['images_per_s'] / c['cached']['images_per_s']:.2f} x cached; "
                    f"{r['config']['backbone']}, batch {r['config']['batch_size']}, compile={r['config']['compile']}",
                )
            )
    if "retrieval" in r:
        c = r["retrieval"]
        rows.append(("retrieval metrics", f"{c['seconds']:.2f} s", f"{c['images']:,} x {c['captions']:,} embeddings"))
    return rows


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    cpu = f" ({env['cpu']})" if env.get("cpu") else ""
    lines = [
        f"# clip_lab bench — {env['device']}, {results['date']}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Stack: torch {env['torch']}, torchvision {env['torchvision']}, lightning {env['lightning']}, "
        f"{env['cpu_cores']} CPU cores{cpu}",
    ]
    if rows := table(results):
        lines += ["", "| measure | value | note |", "| --- | --- | --- |"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    if "index" in results:
        from clip_lab.jobs import index_bench

        lines += ["", index_bench.markdown(results["index"]).rstrip("\n")]
    if "serve" in results:
        from clip_lab.jobs import serve_bench

        lines += ["", serve_bench.markdown(results["serve"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    from clip_lab.data.coco import load_coco_split
    from clip_lab.data.image_cache import build_image_cache
    from clip_lab.data.synthetic import COCO_SIZES, make_demo_dataset

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    root = Path(args.root)
    parts = set(
        args.only
        or ["caption_cache", "image_cache", "ceiling", "loader", "fit", "naive", "retrieval", "features", "heads"]
    )
    if unknown := parts - {
        "caption_cache",
        "image_cache",
        "ceiling",
        "loader",
        "fit",
        "naive",
        "retrieval",
        "features",
        "heads",
        "index",
        "serve",
        "text",
    }:
        raise ClipLabError(f"--only: unknown part(s) {', '.join(sorted(unknown))}; see --help for the list")
    results: dict[str, Any] = {
        "command": "python -m clip_lab bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": machine(device),
        "config": {k: v for k, v in vars(args).items() if k not in ("root", "out", "only")},
    }
    steps: list[tuple[str, Callable[[], Any]]] = []
    data_root = root / "coco"

    def data() -> dict[str, Any]:
        t0 = time.perf_counter()
        make_demo_dataset(
            data_root,
            args.n_train,
            args.n_val,
            sides=args.sides,
            sizes=None if args.small else COCO_SIZES,
            projection_dim=512,
            workers=args.workers,
        )
        return {"train_images": args.n_train, "val_images": args.n_val, "seconds": time.perf_counter() - t0}

    def image_cache() -> dict[str, Any]:
        split = load_coco_split(data_root, "train2014")
        cache = data_root / "cache"  # where fit finds it afterwards
        for old in cache.glob("images_train2014_*"):
            old.unlink()  # always a fresh, timed build
        t0 = time.perf_counter()
        build_image_cache(cache, split, args.cache_image_size, device, args.workers)
        dt = time.perf_counter() - t0
        shapes = f"sides {args.sides[0]}-{args.sides[1]} px" if args.small else "COCO's sizes (mostly 640x480)"
        return {
            "images": args.n_train,
            "shapes": shapes,
            "size": args.cache_image_size,
            "seconds": dt,
            "images_per_s": args.n_train / dt,
            "decoder": "nvJPEG" if device.type == "cuda" else f"PIL x {args.workers} processes",
        }

    if parts & {"image_cache", "loader", "fit", "naive", "features"}:  # the parts that read the generated JPEGs
        steps.append(("data", data))
    if "caption_cache" in parts:
        steps.append(("caption_cache", lambda: bench_caption_cache(root, args.captions, device, args.small)))
    if "image_cache" in parts:
        steps.append(("image_cache", image_cache))
    if "ceiling" in parts:
        steps.append(("ceiling", lambda: bench_ceiling(args, device)))
    if "loader" in parts:
        steps.append(("loader", lambda: bench_loader(args, data_root, device)))
    if "fit" in parts:
        steps.append(("fit", lambda: bench_fit(args, data_root, device)))
    if "naive" in parts:
        steps.append(("naive", lambda: bench_naive(args, data_root, device)))
    if "retrieval" in parts:
        steps.append(("retrieval", lambda: bench_retrieval(args.retrieval_images, args.retrieval_captions, device)))
    if "features" in parts:
        steps.append(("features", lambda: bench_features(args, data_root, device)))
    if "heads" in parts:
        steps.append(("heads", lambda: bench_heads(args, device)))
    if "text" in parts:
        steps.append(("text", lambda: bench_text(args, root, device)))
    if "index" in parts:
        from clip_lab.jobs import index_bench

        index_bench.require_faiss()  # before any other part spends its time
        steps.append(("index", lambda: index_bench.run(args, device)))
    if "serve" in parts:
        from clip_lab.jobs import serve, serve_bench

        serve.require_fastapi()  # before any other part spends its time
        steps.append(("serve", lambda: serve_bench.run(args, device)))
    for name, run in steps:
        log.info("bench: %s ...", name)
        results[name] = run()
        _free(device)  # the part's tensors went with its function's frame
        log.info("bench: %s %s", name, json.dumps(results[name], default=str))

    out = Path(args.out)
    save_json(results, out)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(results))
    print(f"\nclip_lab bench on {results['environment']['device']} ({out}):")
    if rows := table(results):
        width = max(len(a) for a, _, _ in rows)
        for a, b, c in rows:
            print(f"  {a:<{width}}  {b:>18}  {c}")
    if "index" in results:
        from clip_lab.jobs import index_bench

        index_bench.print_table(results["index"])
    if "serve" in results:
        from clip_lab.jobs import serve_bench

        serve_bench.print_table(results["serve"])
    return results
