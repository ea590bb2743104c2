"""The LightningModule that trains the image tower against cached text embeddings and evaluates retrieval."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from clip_lab.data.augment import center_crop
from clip_lab.errors import ClipLabError
from clip_lab.eval.examples import test_examples
from clip_lab.eval.scoring import score_first_captions, score_split
from clip_lab.models.image import ImageEncoder, build_head
from clip_lab.models.loss import InfoNCE
from clip_lab.models.text_towers import LSTMTextTower, build_text_tower
from clip_lab.train.distributed import gather_rows, gather_with_grad
from clip_lab.train.optim import adamw, clamp_logit_scale, warmup_cosine

log = logging.getLogger(__name__)

PROGRESS_KEYS = ("i2t_R@1", "t2i_R@1", "rsum")  # the validation recall an epoch's progress line shows


FINITE_CHECK_EVERY = 50  # steps between looks at the NaN/inf flag (each look is one host sync)
# what a checkpoint's weights are shaped by
ARCHITECTURE = (
    "backbone",
    "embed_dim",
    "head",
    "head_hidden",
    "head_norm",
    "text_encoder",
    "vocab_size",
    "text_width",
    "text_layers",
)


def check_compatible(stored: dict[str, Any], current: dict[str, Any]) -> None:
    """A checkpoint of another architecture gives one clear line instead of a state_dict shape mismatch."""
    diff = [
        f"{k}: checkpoint {stored.get(k)!r}, config {current.get(k)!r}"
        for k in ARCHITECTURE
        if k in stored and k in current and stored.get(k) != current.get(k)
    ]
    if diff:
        raise ClipLabError(
            "the checkpoint was trained with another model (" + "; ".join(diff) + "): use the run's "
            "own config (-c results/<run>/config.yaml) or set those model options to match"
        )


class ClipLab(L.LightningModule):
    """Image encoder + projection head trained with symmetric InfoNCE against text embeddings: by default a frozen
    CLIP text tower's, cached once per caption; or those of a text encoder trained alongside (`text_encoder`).

    Args:
        backbone: torchvision model name of the image encoder.
        weights: torchvision weights name (ImageNet `IMAGENET1K_V2` for ResNet50), or null for random init.
        embed_dim: width of the text embeddings (linked from the data's text model by the CLI).
        head: the projection head: "mlp" (Linear -> [norm] -> GELU -> Linear, the lab's) or "linear" (one matrix).
        head_hidden: hidden width of the MLP head.
        head_norm: normalization after the head's first Linear: null (baseline), "batch" or "layer".
        freeze_stages: ResNet stages kept frozen at their pretrained values (0: none; 1: the stem; 2: the stem and
            layer1; ... 5: everything but the head).
        lr: peak learning rate of the head and the temperature.
        backbone_lr: peak learning rate of the (pretrained) backbone; fine-tuning wants it lower than the head's.
        weight_decay: AdamW decay of weight matrices (biases, norms and the temperature get none).
        warmup_fraction: share of all optimizer steps spent on linear warmup before the cosine decay to zero.
        temperature: initial softmax temperature (CLIP's 0.07, a logit scale of ~14.3); learned from there.
        max_logit_scale: the logit scale (1 / temperature) is clamped at this value, as in CLIP.
        image_size: side of the input images (linked from the data by the CLI); only a Vision Transformer's shape
            depends on it.
        text_encoder: null (default): the data's frozen CLIP text tower, whose caption embeddings are cached once;
            "lstm": a word-level bidirectional LSTM trained from scratch, its vocabulary the training captions'
            `vocab_size - 2` most frequent words; otherwise a Hugging Face encoder id or directory fine-tuned end to
            end (e.g. distilbert-base-uncased). A trained text encoder sees token rows in the training step and
            re-embeds the evaluation captions at every evaluation.
        text_lr: peak learning rate of the trained text encoder's body (its projection trains at `lr`): ~2e-5
            fine-tunes a pretrained transformer; an LSTM from scratch wants ~1e-3.
        text_max_length: tokens (LSTM: words) per caption for a trained text encoder; longer captions are cut.
        vocab_size: rows of the LSTM's word embedding (two reserved: padding, unknown).
        text_width: the LSTM's word-embedding and state width (both directions together).
        text_layers: stacked LSTM layers per direction.
        text_pretrained: load the transformer's pretrained weights (false: its architecture alone, e.g. when a
            checkpoint's weights replace them).
        compile: `torch.compile` the training forward pass (GPU: ~1.4x the images/s of ResNet50 after a minute or
            two of compilation at the start of fit; evaluation stays eager).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        weights: str | None = "IMAGENET1K_V2",
        embed_dim: int = 512,
        head: str = "mlp",
        head_hidden: int = 2048,
        head_norm: str | None = None,
        freeze_stages: int = 0,
        lr: float = 1e-3,
        backbone_lr: float = 1e-4,
        weight_decay: float = 0.1,
        warmup_fraction: float = 0.05,
        temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        compile: bool = False,
        image_size: int = 224,
        text_encoder: str | None = None,
        text_lr: float = 2e-5,
        text_max_length: int = 32,
        vocab_size: int = 10000,
        text_width: int = 512,
        text_layers: int = 1,
        text_pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.image_encoder = ImageEncoder(backbone, weights, freeze_stages, image_size)
        self.head = build_head(head, self.image_encoder.out_dim, embed_dim, head_hidden, head_norm)
        self.text_tower = (
            None
            if text_encoder is None
            else build_text_tower(
                text_encoder, embed_dim, text_max_length, vocab_size, text_width, text_layers, text_pretrained
            )
        )
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / temperature)))
        self.loss = InfoNCE()
        self._compiled_forward: Any = None
        self._nonfinite: Tensor | None = None
        self._checked_step = 0  # set by to_fast_layout(compile=True); a function, not a submodule
        self._eval: list[tuple[Tensor, Tensor, Tensor]] = []
        self.test_outputs: dict[str, Any] = {}  # set by test, written by the CLI's TestResults callback

    def forward(self, images: Tensor) -> Tensor:
        """uint8 images -> L2-normalized embeddings in the text embedding space."""
        return F.normalize(self.head(self.image_encoder(images)).float(), dim=-1)

    def embed_text(self, rows: Tensor) -> Tensor:
        """The text side of a batch: cached caption embeddings as they come, or token rows through the trained text
        encoder (a row of zeros, an image without captions, stays zeros)."""
        if self.text_tower is None:
            return rows
        return self.text_tower(rows) * (rows > 0).any(dim=1, keepdim=True)

    # -- what inference reads (as it reads a pretrained model: clip_lab.models.pretrained.PretrainedModel) ----------
    @property
    def embed_dim(self) -> int:
        return int(self.hparams.embed_dim)

    def embed_squares(self, squares: Tensor, image_size: int) -> Tensor:
        """uint8 `[B, S, S, 3]` squares (as the image cache holds them) -> unit embeddings of their central
        `image_size` crops, as `test` evaluates them."""
        return self(center_crop(squares, image_size))

    def zero_shot_scale(self) -> tuple[float, None]:
        """(the learned logit scale, no bias): zero-shot probabilities are a softmax of `logit_scale * cosine`."""
        return float(self.logit_scale.detach().exp()), None

    # -- training -----------------------------------------------------------------------------------------------------
    def to_fast_layout(self, compile: bool = False) -> None:
        """On a GPU: channels_last weights (the layout Tensor Cores convolve fastest), and `torch.compile` if asked."""
        if self.device.type == "cuda":
            self.image_encoder.use_channels_last()
        if compile:
            self._compiled_forward = torch.compile(self.forward)

    def on_fit_start(self) -> None:
        self.to_fast_layout(self.hparams.compile)

    def train_loss(self, images: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """(InfoNCE loss, in-batch accuracy) of a batch: the whole training computation before backward."""
        forward = self._compiled_forward or self.forward
        # over several processes: the loss of the global batch (every rank's pairs are every rank's negatives)
        return self.loss(
            gather_with_grad(forward(images)), gather_with_grad(self.embed_text(text)), self.logit_scale.exp()
        )

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        images, text, _ = batch
        loss, acc = self.train_loss(images, text)
        # remembered on the device, read every FINITE_CHECK_EVERY steps: one host sync per 50 steps, not per step
        nonfinite = ~torch.isfinite(loss.detach())
        self._nonfinite = nonfinite if self._nonfinite is None else self._nonfinite | nonfinite
        # epoch-level logging accumulates on the device: no host sync per step
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", acc, on_step=False, on_epoch=True)
        self.log("train/logit_scale", self.logit_scale.exp(), on_step=False, on_epoch=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        clamp_logit_scale(self.logit_scale, self.hparams.max_logit_scale)
        if self._nonfinite is not None and (
            self.global_step % FINITE_CHECK_EVERY == 0 or batch_idx + 1 == self.trainer.num_training_batches
        ):
            self._check_finite()

    def _check_finite(self) -> None:
        """Stop at the first check after the loss went NaN or infinite, naming the steps and last good checkpoint."""
        if bool(self._nonfinite):
            callback = self.trainer.checkpoint_callback
            good = (getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")) or "none yet"
            raise ClipLabError(
                f"the training loss became NaN or infinite at or before global step {self.global_step} (after step "
                f"{self._checked_step}, the last check); last good checkpoint: {good}. Lower model.lr / "
                "model.backbone_lr or check the data, then resume from it with --ckpt_path"
            )
        self._checked_step = self.global_step

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the augmentation's random state, so a resumed run draws the same crops as an uninterrupted one
        checkpoint["clip_lab_rng"] = {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        if isinstance(
            self.text_tower, LSTMTextTower
        ):  # the vocabulary is no tensor, but the weights mean nothing without it
            checkpoint["clip_lab_vocabulary"] = self.text_tower.vocabulary

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_compatible(checkpoint.get("hyper_parameters", {}), self.hparams)
        mine, theirs = self.state_dict(), checkpoint.get("state_dict", {})
        differ = sorted(set(mine) ^ set(theirs)) + [k for k in mine if k in theirs and mine[k].shape != theirs[k].shape]
        if differ:  # hyperparameters can be overridden on loading; the tensors cannot lie
            k = differ[0]
            shapes = (
                f"{tuple(theirs[k].shape) if k in theirs else 'absent'} in the checkpoint, "
                f"{tuple(mine[k].shape) if k in mine else 'absent'} here"
            )
            raise ClipLabError(
                f"the checkpoint holds another model than this configuration builds ({len(differ)} "
                f"tensors differ, e.g. {k}: {shapes}); load it with the run's own config or matching "
                "model options"
            )
        if isinstance(self.text_tower, LSTMTextTower):
            if not checkpoint.get("clip_lab_vocabulary"):
                raise ClipLabError(
                    "the checkpoint has LSTM text-encoder weights but no vocabulary (clip_lab_vocabulary); "
                    "it was not written by clip_lab's fit: retrain, or load one that was"
                )
            self.text_tower.set_vocabulary(checkpoint["clip_lab_vocabulary"])
        rng = checkpoint.get("clip_lab_rng")
        trainer = self._trainer  # None when loaded outside a Trainer (load_from_checkpoint)
        if rng and trainer is not None and trainer.state.fn == "fit":  # resuming: continue the same stream
            torch.set_rng_state(rng["cpu"])
            if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.build_optimizer()
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = warmup_cosine(optimizer, total, self.hparams.warmup_fraction)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def build_optimizer(self) -> torch.optim.AdamW:
        """AdamW; the image backbone at `backbone_lr`, a trained text encoder's body at `text_lr`, the rest (heads,
        temperature) at `lr`; decay on weight matrices only (`optim.decays`); fused on CUDA."""
        hp = self.hparams
        parts = {"image_encoder.": hp.backbone_lr, "text_tower.body.": hp.text_lr}
        return adamw(self.named_parameters(), hp.lr, hp.weight_decay, parts, fused=self.device.type == "cuda")

    # -- evaluation ---------------------------------------------------------------------------------------------------
    def _eval_step(self, batch: tuple[Tensor, Tensor, Tensor]) -> None:
        images, text, index = batch
        self._eval.append((index, self(images), self.embed_text(text)))

    def _eval_end(self, stage: str) -> dict[str, float] | None:
        index, image_emb, first_caption = gather_rows(*(torch.cat(t) for t in zip(*self._eval)))  # all ranks' images
        self._eval.clear()
        if self.trainer.sanity_checking:
            return None
        datamodule = self.trainer.datamodule
        expected = torch.as_tensor(datamodule.eval_images(stage), device=index.device)
        order = index.argsort()
        if not torch.equal(index[order], expected):
            raise RuntimeError(
                f"{stage}: embedded {len(index)} images, expected the {len(expected)} of the split "
                "(limit_val_batches / limit_test_batches < 1 cannot give retrieval metrics)"
            )
        image_emb, first_caption = image_emb[order], first_caption[order]
        # a trained text encoder re-embeds the evaluated captions (token rows) as it is now; else the cached ones
        embed = None if self.text_tower is None else lambda rows: self.text_tower.encode_tokens(rows.to(self.device))
        targets = datamodule.retrieval_targets(stage, embed)
        metrics = score_split(datamodule, stage, image_emb, targets)
        metrics["loss"] = self._eval_loss(image_emb, first_caption, datamodule.hparams.batch_size)
        shown = {f"{stage}/{k}": float(metrics[k]) for k in PROGRESS_KEYS}  # beside the loss in the progress bar
        self.log_dict(shown, prog_bar=True)
        self.log_dict({f"{stage}/{k}": float(v) for k, v in metrics.items() if f"{stage}/{k}" not in shown})
        if stage == "test":
            first = score_first_captions(image_emb, first_caption)
            self.log_dict({f"test/first_caption/{k}": float(v) for k, v in first.items()})
            split = datamodule.split(datamodule.eval_split(stage))
            caption_emb, caption_image = targets
            examples, embeddings = test_examples(
                image_emb,
                caption_emb.to(self.device),
                caption_image.to(self.device),
                split,
                datamodule.eval_images(stage),
                datamodule.eval_captions(stage),
                image_ref=lambda i: datamodule.image_ref(split, i),
            )
            # what the run's result files hold (train.results.TestResults writes them)
            self.test_outputs = {
                "metrics": metrics,
                "first_caption": first,
                "examples": examples,
                "embeddings": embeddings,
            }
        return metrics

    @torch.no_grad()
    def _eval_loss(self, image_emb: Tensor, text_emb: Tensor, batch_size: int) -> float:
        """InfoNCE over consecutive chunks of the training batch size (so it compares with the training loss)."""
        has_caption = text_emb.abs().sum(dim=1) > 0
        image_emb, text_emb = image_emb[has_caption], text_emb[has_caption]
        scale = self.logit_scale.exp()
        losses = [self.loss(i, t, scale)[0] for i, t in zip(image_emb.split(batch_size), text_emb.split(batch_size))]
        return torch.stack(losses).mean().item()

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_start(self) -> None:
        self.to_fast_layout()

    def test_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")
