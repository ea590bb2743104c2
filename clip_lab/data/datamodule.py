"""The LightningDataModule for captioned images (COCO, Flickr8k/30k, Karpathy splits): caches, batches, device views."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from clip_lab.data import image_cache
from clip_lab.data.augment import augment, center_crop
from clip_lab.data.caption_cache import caption_cache_path, caption_embeddings, ensure_caption_cache, expected_meta
from clip_lab.data.datasets import DEMO_DESCRIPTION, check_dataset_files, data_title, load_split
from clip_lab.data.kaggle import SEEDED
from clip_lab.data.loader import CachedBatchLoader
from clip_lab.data.protocols import Protocol, resolve_protocol
from clip_lab.data.sampling import PairBatchSampler, Pairs
from clip_lab.data.split import CaptionedSplit
from clip_lab.errors import ClipLabError
from clip_lab.models import pretrained
from clip_lab.models.text import DEFAULT_TEXT_MODEL

log = logging.getLogger(__name__)

TRAINED_TEXT_DIM = 512  # the shared embedding width when the text encoder is trained too (CLIP ViT-B/32's)
Tokenizer = Callable[[Sequence[str]], Tensor]
Embed = Callable[[Tensor], Tensor]


class RetrievalData(L.LightningDataModule):
    """Captioned images: `train_split` for training, `val_split` (or a fixed subset of it) for validation, and
    `test_split` under a named protocol for test.

    Args:
        dataset: the files' format and layout under `data_root` (see `clip_lab.data.datasets`): "coco" (official
            COCO 2014 or 2017: `<split>/` image folders, `annotations/captions_<split>.json`), "coco_karpathy"
            (`dataset_coco.json`), "flickr8k" (the official text files), "flickr8k_karpathy", "flickr30k".
        data_root: the folder holding the dataset's files.
        text_model: the pretrained model whose frozen text tower embeds the captions: a Hugging Face id or folder
            (`hf:` optional) of CLIP, SigLIP, BLIP or ALIGN, or an OpenCLIP model (`open_clip:ViT-B-32:openai`)
            (unused when the text encoder is trained: `text_encoder`).
        max_length: token limit of the text encoder (CLIP's context is 77).
        cache_dir: where the caption caches are written.
        image_size: side of the square crop the image encoder sees.
        cache_image_size: side of the square images stored in the image cache; a little above `image_size`
            (256 for 224: evaluation sees the standard 87.5% centre crop, training crops have room).
        crop_scale: augmentation: random resized crop keeping an area fraction in `[crop_scale, 1]` of the stored
            image (1.0: none; training sees the evaluation centre crop).
        flip: augmentation: probability of a horizontal flip.
        jitter: augmentation: brightness/contrast/saturation factors drawn from `[1 - jitter, 1 + jitter]`.
        batch_size: training pairs per process and step; with N processes the loss sees the global batch of
            N * batch_size pairs (each pair has N * batch_size - 1 negatives).
        eval_batch_size: images per batch when embedding the validation/test gallery.
        num_workers: threads gathering batches from the image cache (and processes decoding images when the cache
            is built without a GPU).
        pairs: "image" (each image once per epoch, a random caption) or "caption" (each caption once per epoch).
        val_images: size of the fixed seeded validation subset of the validation split (0 or more than the split:
            all of it).
        seed: seeds the validation subset and the per-epoch shuffles.
        max_bad_images: fraction of a split's images that may be unreadable or absent; they are skipped (listed in
            the image cache's metadata). More stops before training with the files named.
        text_batch_size: captions per batch when building the caption cache.
        train_split: the split trained on; several Karpathy splits join with "+" (COCO: "train+restval").
        val_split: the split validated on (checkpoint selection); null: a fixed subset of `test_split` (the lab's
            COCO 2014 set-up, which has no third split).
        test_split: the split `test` evaluates.
        protocol: how `test` evaluates it (`clip_lab.data.protocols`): "auto" (the standard one of the dataset's test
            split: coco5k, flickr1k or val2014; else "full"), or a name, e.g. "coco1k" (mean over 5 folds).
        text_encoder: set from `model.text_encoder` by the CLI: null, the captions are embedded once by the frozen
            `text_model` and batches carry the embeddings; otherwise the model trains its own text encoder, batches
            carry token rows (its tokenizer, `use_tokenizer`) and no CLIP model is needed.
        split_seed: seeds the train / val / test split of a download that names none (Kaggle's Flickr without split
            lists beside it); apart from `seed`, so that every seed of a sweep trains and tests on the same images.
    """

    def __init__(
        self,
        data_root: str = "data/coco",
        text_model: str = DEFAULT_TEXT_MODEL,
        max_length: int = 77,
        cache_dir: str = "cache",
        image_size: int = 224,
        cache_image_size: int = 256,
        crop_scale: float = 1.0,
        flip: float = 0.0,
        jitter: float = 0.0,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        num_workers: int = 8,
        pairs: Pairs = "image",
        val_images: int = 5000,
        seed: int = 0,
        max_bad_images: float = 0.01,
        text_batch_size: int = 1024,
        dataset: str = "coco",
        train_split: str = "train2014",
        val_split: str | None = None,
        test_split: str = "val2014",
        protocol: str = "auto",
        text_encoder: str | None = None,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not 0 < image_size <= cache_image_size:
            raise ClipLabError(
                f"image_size {image_size} must be positive and at most cache_image_size {cache_image_size}"
            )
        if not (0 < crop_scale <= 1 and 0 <= flip <= 1 and 0 <= jitter < 1):
            raise ClipLabError("augmentation out of range: need 0 < crop_scale <= 1, 0 <= flip <= 1, 0 <= jitter < 1")
        self.protocol: Protocol = resolve_protocol(protocol, dataset, test_split)
        check_dataset_files(dataset, data_root, self.split_names())  # fail before any work
        # the text side's width (linked to model.embed_dim); reading the model's config fails fast when it is absent
        self.embed_dim = pretrained.embed_dim(text_model) if text_encoder is None else TRAINED_TEXT_DIM
        self.splits: dict[str, CaptionedSplit] = {}
        self.embeddings: dict[str, Tensor] = {}
        self.tokenizer: Tokenizer | None = None
        self.tokens: dict[str, Tensor] = {}
        self._usable: dict[str, np.ndarray] = {}

    # -- caches -----------------------------------------------------------------------------------------------------
    def split(self, name: str) -> CaptionedSplit:
        """The named split (its annotations read once)."""
        if name not in self.splits:
            self.splits[name] = load_split(self.hparams.dataset, self.hparams.data_root, name, self.hparams.split_seed)
        return self.splits[name]

    def split_names(self) -> list[str]:
        """The splits this data uses (train, validation, test), each once."""
        hp = self.hparams
        return list(dict.fromkeys([hp.train_split, hp.val_split or hp.test_split, hp.test_split]))

    def eval_split(self, stage: str) -> str:
        """The split evaluated at `stage`: the test split for test; the validation split, if any, for validation."""
        hp = self.hparams
        return hp.test_split if stage == "test" else hp.val_split or hp.test_split

    def _cache(self, name: str) -> tuple[Path, dict]:
        hp = self.hparams
        split = self.split(name)
        return caption_cache_path(hp.cache_dir, split, hp.text_model, hp.max_length), expected_meta(
            split, hp.text_model, hp.max_length
        )

    def prepare_data(self) -> None:
        """Build the image and caption caches of each split that has none or a stale one (runs in one process)."""
        hp = self.hparams
        device = "cuda" if torch.cuda.is_available() else "cpu"
        encoder = functools.cache(
            lambda: pretrained.text_encoder(hp.text_model, hp.max_length).to(device)
        )  # loaded once, if needed
        self._usable.clear()  # the caches may be rebuilt below
        for name in self.split_names():
            split = self.split(name)
            image_cache.ensure_image_cache(
                hp.cache_dir, split, hp.cache_image_size, device, hp.num_workers, hp.max_bad_images
            )
            if hp.text_encoder is None:  # a trained text encoder tokenizes at setup instead: nothing to cache
                ensure_caption_cache(split, hp.cache_dir, hp.text_model, hp.max_length, encoder, hp.text_batch_size)

    def caption_embeddings(self, name: str) -> Tensor:
        """The split's cached caption embeddings, float16 `[n_captions, dim]` (memory-mapped), in caption order."""
        if name not in self.embeddings:
            path, meta = self._cache(name)
            self.embeddings[name] = caption_embeddings(path, meta, self.split(name))
        return self.embeddings[name]

    def use_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Batches carry the captions as token rows of `tokenizer` (the model's trained text encoder's), not cached
        embeddings; each split is tokenized once, when first needed."""
        if self.hparams.text_encoder is None:
            raise RuntimeError("use_tokenizer: data.text_encoder is null (frozen cached text embeddings)")
        self.tokenizer = tokenizer
        self.tokens.clear()

    def caption_rows(self, name: str) -> Tensor:
        """What batches carry per caption of split `name`, in caption order: the cached frozen-CLIP embeddings
        (float16 `[n, dim]`), or, for a trained text encoder, its token rows (int32 `[n, max_length]`)."""
        if self.hparams.text_encoder is None:
            return self.caption_embeddings(name)
        if self.tokenizer is None:
            raise RuntimeError(
                "data.text_encoder is set but no tokenizer was given: the CLI's connect_text calls use_tokenizer"
            )
        if name not in self.tokens:
            self.tokens[name] = self.tokenizer(self.split(name).captions)
        return self.tokens[name]

    # -- evaluation targets -------------------------------------------------------------------------------------------
    def usable_images(self, name: str) -> np.ndarray:
        """Indices of the split's images that its image cache could read (the others are skipped everywhere)."""
        if name not in self._usable:  # read once: evaluation asks several times per epoch
            split, hp = self.split(name), self.hparams
            bad = image_cache.bad_image_indices(hp.cache_dir, split, hp.cache_image_size)
            self._usable[name] = np.setdiff1d(np.arange(len(split.image_ids)), bad)
        return self._usable[name]

    def eval_images(self, stage: str) -> np.ndarray:
        """Indices (into `eval_split(stage)`) of the images evaluated at `stage` (validation: a fixed seeded subset)."""
        usable = self.usable_images(self.eval_split(stage))
        k = self.hparams.val_images
        if stage == "test" or k <= 0 or k >= len(usable):
            return usable
        return np.sort(np.random.default_rng(self.hparams.seed).choice(usable, size=k, replace=False))

    def eval_captions(self, stage: str) -> np.ndarray:
        """Indices (into the split's captions) of the captions evaluated at `stage`: those of the evaluated images,
        each image's first `protocol.captions_per_image` only when the protocol caps them."""
        split = self.split(self.eval_split(stage))
        evaluated = np.zeros(len(split.image_ids), dtype=bool)
        evaluated[self.eval_images(stage)] = True
        keep = evaluated[split.caption_image]
        cap = self.protocol.captions_per_image
        if cap is not None:  # a caption's place among its image's captions (they are grouped, image by image)
            keep &= np.arange(len(split.caption_image)) - split.caption_start[split.caption_image] < cap
        return np.flatnonzero(keep)

    def retrieval_targets(self, stage: str, embed: Embed | None = None) -> tuple[Tensor, Tensor]:
        """(caption embeddings, caption -> position in `eval_images(stage)`) for `eval_captions(stage)`: the cached
        embeddings, or `embed(token rows)` for a trained text encoder."""
        split = self.split(self.eval_split(stage))
        images, captions = self.eval_images(stage), self.eval_captions(stage)
        position = np.full(len(split.image_ids), -1)
        position[images] = np.arange(len(images))
        rows = self.caption_rows(self.eval_split(stage))[torch.from_numpy(captions)]
        if (embed is None) != (self.hparams.text_encoder is None):
            raise RuntimeError(
                "retrieval_targets: token rows need `embed` (the trained text encoder); cached embeddings take none"
            )
        return rows if embed is None else embed(rows), torch.from_numpy(position[split.caption_image[captions]])

    def image_ref(self, split: CaptionedSplit, i: int) -> dict[str, Any]:
        """Where image `i` of `split` is found again for a picture: its file, and its row of the image cache."""
        return image_cache.image_ref(self.hparams.cache_dir, split, self.hparams.cache_image_size, i)

    def describe(self) -> dict[str, Any]:
        """What this data is, as a run's records keep it (the report reads them): the dataset and its title, the
        images training visits per epoch and those validation ranks checkpoints on. Needs the image caches."""
        hp = self.hparams
        train = self.split(hp.train_split)
        val_split = self.eval_split("val")
        n_val = len(self.eval_images("val"))
        return {
            "dataset": hp.dataset,
            "title": data_title(hp.dataset, train.description, hp.train_split),
            "generated": train.description.startswith(DEMO_DESCRIPTION),
            "data_root": hp.data_root,
            "train_split": hp.train_split,
            "train_images": len(self._train_sampler(self.usable_images(hp.train_split)).images),
            "val_split": val_split,
            "val_images": n_val,
            "val_subset": n_val < len(self.usable_images(val_split)),
            "test_split": hp.test_split,
            "protocol": self.protocol.name,
            "split_origin": train.origin or None,
        }

    def split_lists(self) -> dict[str, list[str]] | None:
        """Each split's image files when clip_lab drew the split itself (a seeded split): a run keeps them, so that its
        test set can be named and reused; None when the files name their splits."""
        if not self.split(self.hparams.train_split).origin.startswith(SEEDED):
            return None
        return {name: list(self.split(name).file_names) for name in self.split_names()}

    def protocol_record(self, n_images: int, n_captions: int) -> dict[str, Any]:
        """The test protocol as a result file records it, with the gallery evaluated and the test split's size."""
        split = self.split(self.hparams.test_split)
        unreadable = len(split.image_ids) - len(self.usable_images(self.hparams.test_split))
        return self.protocol.record(n_images, n_captions, len(split.image_ids), unreadable)

    # -- loaders ------------------------------------------------------------------------------------------------------
    def _loader(self, name: str, sampler: PairBatchSampler) -> CachedBatchLoader:
        hp = self.hparams
        if image_cache.open_image_cache(hp.cache_dir, self.split(name), hp.cache_image_size) is None:
            raise RuntimeError(f"the image cache of {name} is missing or stale: prepare_data should have built it")
        path, _ = image_cache.image_cache_paths(hp.cache_dir, self.split(name), hp.cache_image_size)
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        return CachedBatchLoader(path, self.caption_rows(name), sampler, device, threads=hp.num_workers)

    def _train_sampler(self, images: np.ndarray | None = None, rank: int = 0, world_size: int = 1) -> PairBatchSampler:
        # drop_last: every step sees a full batch. The last partial batch of each epoch (fewer than batch_size pairs,
        # redrawn every epoch) is left out; InfoNCE would only see fewer negatives in it, and a batch of one pair
        # has none at all
        hp = self.hparams
        return PairBatchSampler(
            self.split(hp.train_split).caption_start,
            hp.batch_size,
            hp.pairs,
            shuffle=True,
            drop_last=True,
            seed=hp.seed,
            images=images,
            rank=rank,
            world_size=world_size,
        )

    def check_trainable(self, world_size: int = 1, readable_only: bool = False) -> None:
        """Stop with one line when the training split cannot fill one batch: fit would make no optimizer step.

        Every captioned image counts (the CLI checks this before any cache is built); `readable_only`: only those the
        image cache could read (checked again at setup, once it is built)."""
        hp = self.hparams
        images = self.usable_images(hp.train_split) if readable_only else None
        sampler = self._train_sampler(images, world_size=world_size)
        if len(sampler) == 0:
            split = self.split(hp.train_split)
            skipped = len(split.image_ids) - len(images) if images is not None else 0
            per = f"{hp.batch_size} x {world_size} processes" if world_size > 1 else str(hp.batch_size)
            raise ClipLabError(
                f"the training split {hp.train_split} has {len(sampler.images)} images with captions"
                + (f" ({skipped} unreadable skipped)" if skipped else "")
                + f", fewer than one batch of {per} "
                "pairs: fit would make no optimizer step. Lower --data.batch_size (at most "
                f"{max(1, len(sampler.images) // world_size)}) or train on a larger split (--data.train_split)"
            )

    def setup(self, stage: str) -> None:
        if stage == "fit":  # the image cache is built by now: count the readable images only
            self.check_trainable(self._world()["world_size"], readable_only=True)

    def train_dataloader(self) -> CachedBatchLoader:
        hp = self.hparams
        sampler = self._train_sampler(self.usable_images(hp.train_split), **self._world())
        return self._loader(hp.train_split, sampler)

    def _eval_loader(self, stage: str) -> CachedBatchLoader:
        hp = self.hparams
        split = self.split(self.eval_split(stage))
        sampler = PairBatchSampler(
            split.caption_start,
            hp.eval_batch_size,
            "first",
            shuffle=False,
            images=self.eval_images(stage),
            **self._world(),
        )
        return self._loader(self.eval_split(stage), sampler)

    def _world(self) -> dict[str, int]:
        """This process's rank and the number of processes: batch_size is per process."""
        if self.trainer is None:
            return {"rank": 0, "world_size": 1}
        return {"rank": self.trainer.global_rank, "world_size": self.trainer.world_size}

    def val_dataloader(self) -> CachedBatchLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> CachedBatchLoader:
        return self._eval_loader("test")

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor, Tensor], dataloader_idx: int) -> tuple:
        """On the device: random views for training, the centre crop for evaluation (uint8 NHWC -> NCHW)."""
        images, text, index = batch
        hp = self.hparams
        if self.trainer is not None and self.trainer.training:
            images = augment(images, hp.image_size, hp.crop_scale, hp.flip, hp.jitter)
        else:
            images = center_crop(images, hp.image_size)
        return images, text, index
