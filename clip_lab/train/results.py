"""A test's result files in the run folder: test_metrics.json, test_examples.json and test_embeddings.pt."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from clip_lab.eval.scoring import FIRST_CAPTION_PROTOCOL
from clip_lab.files import save_json, save_torch

log = logging.getLogger(__name__)


class TestResults(Callback):
    """Writes what `ClipLab` measured in `test` (its `test_outputs`) with the data and protocol it was measured on.

    The one writer of a test's results: rank 0 writes, after every rank has evaluated.
    """

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        run_dir = Path(trainer.log_dir)  # a collective under DDP: every rank asks, rank 0 writes
        outputs = getattr(pl_module, "test_outputs", None)
        if not outputs or not trainer.is_global_zero:
            return
        data, metrics = trainer.datamodule, outputs["metrics"]
        protocol = data.protocol_record(int(metrics["n_images"]), int(metrics["n_captions"]))
        if protocol["published_size"] is False:
            log.warning(
                "test under protocol %s: %s; the numbers are not exactly comparable with published ones",
                protocol["name"],
                protocol["size_note"],
            )
        result = {
            "dataset": data.hparams.dataset,
            "split": data.hparams.test_split,
            "split_origin": data.split(data.hparams.test_split).origin or None,
            "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
            "protocol": protocol,
            "metrics": metrics,
            "first_caption": {"protocol": FIRST_CAPTION_PROTOCOL, "metrics": outputs["first_caption"]},
        }
        save_json(outputs["examples"], run_dir / "test_examples.json")  # for the report's figures
        save_torch(outputs["embeddings"], run_dir / "test_embeddings.pt")
        save_json(result, run_dir / "test_metrics.json")
