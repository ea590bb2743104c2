"""Hardware, data and time of a fit: `results/<run>/run_stats.json`, rewritten atomically after every epoch."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from clip_lab.files import save_json


def machine(device: torch.device) -> dict[str, Any]:
    """What a measurement ran on: the device (a GPU's name, else the CPU's), CPU model and cores, library versions.
    The one probe behind run_stats.json and the benchmarks' records."""
    import torchvision
    import transformers

    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})",
        "accelerator": device.type,
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
    }


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows: CPU timings mean little without it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(trainer: Trainer) -> dict[str, Any]:
    """What ran the fit: `machine` of its device, with the number of devices and the precision."""
    return machine(trainer.strategy.root_device) | {"devices": trainer.num_devices, "precision": str(trainer.precision)}


class RunStats(Callback):
    """Wall time per epoch (training and validation apart), total fit time and training images/s.

    Epoch boundaries synchronize the device once, so the times are the GPU's, not the launch queue's; nothing is
    synchronized inside an epoch.
    """

    def __init__(self) -> None:
        self.stats: dict[str, Any] = {}
        self._t_fit = self._t_epoch = self._t_val = 0.0
        self._val_seconds = 0.0
        self._earlier_seconds = 0.0  # fit time of the epochs before a resume

    def _now(self, module: LightningModule) -> float:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        return time.perf_counter()

    def _save(self, trainer: Trainer) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks, rank 0 writes
        if trainer.is_global_zero and log_dir:
            save_json(self.stats, Path(log_dir) / "run_stats.json")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._t_fit = self._now(pl_module)
        data = trainer.datamodule.describe() if hasattr(trainer.datamodule, "describe") else None
        lists = trainer.datamodule.split_lists() if hasattr(trainer.datamodule, "split_lists") else None
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks, rank 0 writes
        if lists is not None and trainer.is_global_zero and log_dir:  # a split clip_lab drew: keep its images
            save_json({"origin": data and data["split_origin"], "images": lists}, Path(log_dir) / "split_lists.json")
        self.stats = {"hardware": hardware(trainer), "data": data, "epochs": [], "fit_seconds": None, "finished": False}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        earlier = Path(trainer.log_dir or "") / "run_stats.json"
        if trainer.ckpt_path and earlier.is_file():  # resumed (the epoch is restored by now): keep the earlier epochs
            old = json.loads(earlier.read_text())
            self.stats["epochs"] = [e for e in old.get("epochs", []) if e["epoch"] < trainer.current_epoch]
            self.stats["resumed_at_epoch"] = trainer.current_epoch
            self._earlier_seconds = sum(e["seconds"] for e in self.stats["epochs"])

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._t_epoch, self._val_seconds = self._now(pl_module), 0.0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._t_val = self._now(pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._val_seconds += self._now(pl_module) - self._t_val

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seconds = self._now(pl_module) - self._t_epoch  # validation at the epoch's end falls inside this span
        train_seconds = seconds - self._val_seconds
        batch_size = getattr(trainer.datamodule.hparams, "batch_size", 0) if trainer.datamodule else 0
        images = int(trainer.num_training_batches * batch_size * trainer.world_size)
        self.stats["epochs"].append(
            {
                "epoch": trainer.current_epoch,
                "seconds": seconds,
                "train_seconds": train_seconds,
                "val_seconds": self._val_seconds,
                "train_images": images,
                "train_images_per_s": images / train_seconds if train_seconds > 0 else None,
            }
        )
        self.stats["fit_seconds"] = self._earlier_seconds + time.perf_counter() - self._t_fit
        self._save(trainer)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.stats["fit_seconds"] = self._earlier_seconds + self._now(pl_module) - self._t_fit
        self.stats["finished"] = True
        self._save(trainer)
