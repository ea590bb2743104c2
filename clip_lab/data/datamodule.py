"""The LightningDataModule for COCO-format captioned images: caption cache, image loading, batching."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from clip_lab.data.caption_cache import (
    build_caption_cache,
    caption_cache_path,
    caption_embeddings,
    expected_meta,
    load_caption_cache,
)
from clip_lab.data.coco import CaptionedSplit, check_coco_files, load_coco_split
from clip_lab.data.sampling import Pairs, PairBatchSampler
from clip_lab.text import DEFAULT_TEXT_MODEL, TextEncoder, text_embed_dim

log = logging.getLogger(__name__)


def load_image(path: Path, size: int) -> Tensor:
    """Decode an image as RGB, resize its shorter side to `size` and centre-crop: uint8 `[3, size, size]`.

    `draft` lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the image is much larger than `size`.
    """
    with Image.open(path) as img:
        img.draft("RGB", (size, size))
        img = ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


class PairDataset(Dataset):
    """Item `(image_index, caption_index)` -> (uint8 image, float16 caption embedding, image_index).

    A caption index of -1 (an image without captions) gives a zero embedding; evaluation masks those out.
    """

    def __init__(self, split: CaptionedSplit, embeddings: Tensor, image_size: int) -> None:
        self.split, self.embeddings, self.image_size = split, embeddings, image_size

    def __len__(self) -> int:
        return len(self.split.image_ids)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor, int]:
        image, caption = key
        text = self.embeddings[caption] if caption >= 0 else self.embeddings.new_zeros(self.embeddings.shape[1])
        return load_image(self.split.image_path(image), self.image_size), text, image


class CocoRetrievalData(L.LightningDataModule):
    """COCO 2014 captions: `train_split` for training, a fixed subset of `test_split` for validation, all of it for test.

    Args:
        data_root: folder holding `<split>/` image folders and `annotations/captions_<split>.json`.
        text_model: Hugging Face id or local directory of the frozen CLIP text tower that embeds the captions.
        max_length: token limit of the text encoder (CLIP's context is 77).
        cache_dir: where the caption caches are written.
        image_size: side of the square crop the image encoder sees.
        batch_size: training batch; InfoNCE sees batch_size - 1 negatives per pair.
        eval_batch_size: images per batch when embedding the validation/test gallery.
        num_workers: DataLoader worker processes decoding images.
        pairs: "image" (each image once per epoch, a random caption) or "caption" (each caption once per epoch).
        val_images: size of the fixed validation subset of `test_split` (0 or more than the split: all of it).
        seed: seeds the validation subset and the per-epoch shuffles.
        text_batch_size: captions per batch when building the caption cache.
    """

    def __init__(
        self,
        data_root: str = "data/coco",
        text_model: str = DEFAULT_TEXT_MODEL,
        max_length: int = 77,
        cache_dir: str = "cache",
        image_size: int = 224,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        num_workers: int = 8,
        pairs: Pairs = "image",
        val_images: int = 5000,
        seed: int = 0,
        text_batch_size: int = 1024,
        train_split: str = "train2014",
        test_split: str = "val2014",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_coco_files(data_root, [train_split, test_split])  # fail before any work
        self.embed_dim = text_embed_dim(text_model)  # also fails fast when the text model cannot be found
        self.splits: dict[str, CaptionedSplit] = {}
        self.embeddings: dict[str, Tensor] = {}

    # -- caches -----------------------------------------------------------------------------------------------------
    def _split(self, name: str) -> CaptionedSplit:
        if name not in self.splits:
            self.splits[name] = load_coco_split(self.hparams.data_root, name)
        return self.splits[name]

    def _cache(self, name: str) -> tuple[Path, dict]:
        hp = self.hparams
        split = self._split(name)
        return caption_cache_path(hp.cache_dir, name, hp.text_model, hp.max_length), expected_meta(
            split, hp.text_model, hp.max_length
        )

    def prepare_data(self) -> None:
        """Build the caption cache of each split that has none or a stale one (one process; the text model once)."""
        hp = self.hparams
        encoder = None
        for name in dict.fromkeys([hp.train_split, hp.test_split]):
            path, meta = self._cache(name)
            if load_caption_cache(path, meta, self._split(name)) is not None:
                continue
            if encoder is None:
                encoder = TextEncoder(hp.text_model, hp.max_length)
                if torch.cuda.is_available():
                    encoder = encoder.cuda()
            log.info("building the caption cache of %s with %s -> %s", name, hp.text_model, path)
            build_caption_cache(self._split(name), encoder, path, meta, hp.text_batch_size)

    def _embeddings(self, name: str) -> Tensor:
        if name not in self.embeddings:
            path, meta = self._cache(name)
            self.embeddings[name] = caption_embeddings(path, meta, self._split(name))
        return self.embeddings[name]

    # -- evaluation targets -------------------------------------------------------------------------------------------
    def eval_images(self, stage: str) -> np.ndarray:
        """Indices (into the test split) of the images evaluated at `stage`: a fixed seeded subset for validation."""
        n = len(self._split(self.hparams.test_split).image_ids)
        k = self.hparams.val_images
        if stage == "test" or k <= 0 or k >= n:
            return np.arange(n)
        return np.sort(np.random.default_rng(self.hparams.seed).choice(n, size=k, replace=False))

    def retrieval_targets(self, stage: str) -> tuple[Tensor, Tensor]:
        """(caption embeddings, caption -> position in `eval_images(stage)`) for the captions of the evaluated images."""
        split = self._split(self.hparams.test_split)
        images = self.eval_images(stage)
        position = np.full(len(split.image_ids), -1)
        position[images] = np.arange(len(images))
        keep = position[split.caption_image] >= 0
        emb = self._embeddings(self.hparams.test_split)[torch.from_numpy(np.flatnonzero(keep))]
        return emb, torch.from_numpy(position[split.caption_image[keep]])

    # -- loaders ------------------------------------------------------------------------------------------------------
    def _loader(self, name: str, sampler: PairBatchSampler) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            PairDataset(self._split(name), self._embeddings(name), self.hparams.image_size),
            batch_sampler=sampler,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        split = self._split(hp.train_split)
        sampler = PairBatchSampler(split.caption_start, hp.batch_size, hp.pairs, shuffle=True, drop_last=True, seed=hp.seed)
        return self._loader(hp.train_split, sampler)

    def _eval_loader(self, stage: str) -> DataLoader:
        hp = self.hparams
        split = self._split(hp.test_split)
        sampler = PairBatchSampler(split.caption_start, hp.eval_batch_size, "first", shuffle=False,
                                   images=self.eval_images(stage))
        return self._loader(hp.test_split, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
