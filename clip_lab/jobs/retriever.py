"""The Python API over one trained checkpoint or pretrained model: text and image search of a split, zero-shot
classification, embeddings.

The `search`, `zeroshot` and `serve` jobs are thin layers over `Retriever`:

    from clip_lab import Retriever

    r = Retriever.load("results/demo/checkpoints/best.ckpt")  # gallery: the checkpoint's test split
    for m in r.search_text("a red circle", k=3):                # ImageMatch records, best first
        print(m.rank, round(m.score, 3), m.image_id, m.file_name, m.captions[0])
    r.search_image("photo.jpg", k=5, target="captions")         # CaptionMatch records (or target="images")
    r.classify("photo.jpg", ["circle", "square", "triangle"])   # Classification: predicted, probabilities
    r.embed_texts(["a red circle"]), r.embed_images(["photo.jpg"])  # unit rows, float32 [n, dim]

    p = Retriever.load("hf:openai/clip-vit-base-patch32", config=["configs/coco.yaml"])  # a pretrained model, same API
"""

from __future__ import annotations

import io
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from clip_lab.data import image_cache
from clip_lab.data.split import CaptionedSplit
from clip_lab.errors import ClipLabError
from clip_lab.eval import zeroshot
from clip_lab.eval.index import Index, IndexSpec, open_index
from clip_lab.jobs.infer import (
    Checkpoint,
    caption_gallery,
    embed_images,
    image_gallery,
    open_checkpoint,
    open_split,
    read_image,
    reason,
    text_encoder,
)
from clip_lab.models.pretrained import FrozenText
from clip_lab.models.text_towers import TextTower

# an image to embed: a PIL image, an image file, or an encoded image's bytes (JPEG, PNG, ...)
ImageInput = Image.Image | str | Path | bytes
Target = Literal["images", "captions"]
CACHED_TEXTS = 4096  # query embeddings kept (a few MB at 512 dims): a repeated query skips the text tower
CACHED_CLASS_SETS = 64  # zero-shot class embeddings kept, per (classes, templates)


@dataclass(frozen=True)
class ImageMatch:
    """An image of the gallery that a query retrieved."""

    rank: int  # 1 = best
    score: float  # cosine similarity of the query and the image
    image_id: int
    file_name: str  # relative to the split's image folder
    captions: list[str]  # every caption of the image in the split


@dataclass(frozen=True)
class CaptionMatch:
    """A caption of the gallery that a query retrieved, with the image it belongs to."""

    rank: int
    score: float
    caption: str
    caption_id: int
    image_id: int
    file_name: str


@dataclass(frozen=True)
class Classification:
    """Zero-shot classes of one image. A tie for the top predicts nothing: `predicted` is None, `tied` names them."""

    predicted: str | None
    tied: list[str]
    # the model's own: a softmax over the classes of logit_scale x cosine, or SigLIP's sigmoid with its bias
    probabilities: dict[str, float]
    scores: dict[str, float]  # cosine of the image and each class's prompt ensemble


@dataclass(frozen=True)
class Gallery:
    """What a query is searched against: unit embeddings, the split's index of each row, their index."""

    embeddings: Tensor  # [n, dim]
    rows: np.ndarray  # [n]: for images, the split's image index of each row; for captions, the caption index
    file: Path | None  # the cache file the rows come from (an HNSW index is saved beside it)
    index: Index

    def __len__(self) -> int:
        return len(self.embeddings)


class NotInGallery(ClipLabError):
    """An image id the gallery does not hold (the server answers 404)."""


class Lru:
    """A bounded least-recently-used map (callers hold a lock around `get`)."""

    def __init__(self, size: int) -> None:
        self.size, self.items = size, OrderedDict()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = self.items[key] = make()
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


def normalized(text: str) -> str:
    """A caption as compared with a query: case, surrounding and repeated spaces, and a final full stop ignored."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip().casefold()


class Retriever:
    """A trained checkpoint (or a pretrained model) with its data settings, loaded once, and the galleries of one
    split, embedded once.

    Galleries come from the same caches the `search` job builds and reuses (`infer.image_gallery` and
    `infer.caption_gallery`), built on first use; query embeddings of repeated texts are kept. Every method is
    safe to call from several threads: they take turns on the model and the device (one lock).
    """

    def __init__(
        self,
        ckpt: Checkpoint,
        split: str | CaptionedSplit | None = None,
        index: IndexSpec | str = "exact",
        encoder: FrozenText | TextTower | None = None,
    ):
        """`split`: the gallery (default: the checkpoint's test split); `encoder`: the text encoder queries go through
        (default: the one that built the checkpoint's training targets)."""
        self.ckpt = ckpt
        self._split = split
        if encoder is not None:
            self.__dict__["encoder"] = encoder  # what the cached property would have loaded
        self.spec = IndexSpec(index) if isinstance(index, str) else index
        self.spec.check()  # a bad setting, or FAISS missing for hnsw: before any gallery work
        self.lock = threading.RLock()
        self._texts = Lru(CACHED_TEXTS)
        self._class_sets = Lru(CACHED_CLASS_SETS)
        self._galleries: dict[str, Gallery] = {}

    @classmethod
    def load(
        cls,
        ckpt_path: str | Path,
        split: str | CaptionedSplit | None = None,
        index: IndexSpec | str = "exact",
        device: str | None = None,
        batch_size: int = 256,
        config: Sequence[str] | None = None,
        **data: Any,
    ) -> Retriever:
        """A Retriever of the checkpoint file or pretrained model name (`hf:...`, `open_clip:...`); `split` (default:
        the test split) is the gallery, `data` overrides the data settings (`data_root`, `cache_dir`, ...:
        infer.DATA_FLAGS); a pretrained model's come from the fit configs in `config` (infer.open_checkpoint)."""
        return cls(open_checkpoint(ckpt_path, device, batch_size, config, **data), split, index)

    # -- what it holds -------------------------------------------------------------------------------------------------
    @cached_property
    def split(self) -> CaptionedSplit:
        """The gallery's split, opened on first use (zero-shot and embeddings of files never need it)."""
        if isinstance(self._split, CaptionedSplit):
            return self._split
        return open_split(self.ckpt, self._split or self.ckpt.data["test_split"])

    @cached_property
    def encoder(self) -> FrozenText | TextTower:
        """The text encoder that built the checkpoint's training targets (loaded once)."""
        return text_encoder(self.ckpt)

    @property
    def images(self) -> Gallery:
        """The split's readable images, embedded by the checkpoint (cached on disk; built on first use)."""
        with self.lock:
            if "images" not in self._galleries:
                emb, rows, file = image_gallery(self.ckpt, self.split)
                self.set_gallery("images", emb, rows, file)
            return self._galleries["images"]

    @property
    def captions(self) -> Gallery:
        """Every caption of the split, embedded by the checkpoint's text encoder (cached on disk)."""
        with self.lock:
            if "captions" not in self._galleries:
                emb, file = caption_gallery(self.ckpt, self.split)
                self.set_gallery("captions", emb, np.arange(len(emb)), file)
            return self._galleries["captions"]

    def set_gallery(self, target: Target, embeddings: Tensor, rows: np.ndarray, file: Path | None = None) -> None:
        """Search `embeddings` (unit rows; row j is the split's image or caption `rows[j]`) for `target` from now on."""
        file = file or Path(f"{target}-gallery")
        index = open_index(self.spec, embeddings, file, self.ckpt.device)
        with self.lock:
            self._galleries[target] = Gallery(embeddings, np.asarray(rows), file, index)
            self.__dict__.pop("_image_positions", None)

    @cached_property
    def _rows_by_id(self) -> dict[int, int]:
        return {int(i): r for r, i in enumerate(self.split.image_ids)}

    @cached_property
    def _image_positions(self) -> dict[int, int]:
        """image id -> its row of the image gallery (images the cache could not read have none)."""
        ids = self.split.image_ids
        return {int(ids[r]): p for p, r in enumerate(self.images.rows.tolist())}

    @cached_property
    def _captions_by_text(self) -> dict[str, list[int]]:
        by_text: dict[str, list[int]] = {}
        for caption, image in zip(self.split.captions, self.split.caption_image.tolist()):
            rows = by_text.setdefault(normalized(caption), [])
            if image not in rows:
                rows.append(image)
        return by_text

    def row(self, image_id: int) -> int:
        """The split's index of an image id; ClipLabError when the split has no such image."""
        try:
            return self._rows_by_id[int(image_id)]
        except (KeyError, ValueError, TypeError):
            raise NotInGallery(f"image id {image_id} is not an image of {self.split.name}") from None

    def image_captions(self, image_id: int) -> list[str]:
        """Every caption the split gives the image."""
        start, r = self.split.caption_start, self.row(image_id)
        return self.split.captions[start[r] : start[r + 1]]

    def true_images(self, text: str) -> list[int]:
        """The image ids whose captions include `text` (case, spacing and a final full stop aside): when a query is a
        caption of the split, the image(s) it describes."""
        return [int(self.split.image_ids[r]) for r in self._captions_by_text.get(normalized(text), [])]

    def image_ref(self, image_id: int) -> dict[str, Any]:
        """Where a picture of the image is found again: its file and its row of the image cache."""
        hp = self.ckpt.data
        return image_cache.image_ref(hp["cache_dir"], self.split, hp["cache_image_size"], self.row(image_id))

    def picture(self, image_id: int, size: int = 256) -> np.ndarray:
        """The central square of a gallery image at `size` pixels: from its file, else from the image cache."""
        from clip_lab.report.figures import thumbnail

        picture = thumbnail(self.image_ref(image_id), size)
        if picture is None:
            raise ClipLabError(f"image {image_id} of {self.split.name}: neither its file nor its image cache row reads")
        return picture

    def unknown_words(self, texts: Sequence[str]) -> list[str]:
        """Words of `texts` the text encoder reads as its unknown token: the results do not reflect them."""
        return self.encoder.unknown_words(list(texts))

    # -- embeddings ----------------------------------------------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        """float32 `[len(texts), dim]` unit rows on the CPU, by the encoder that built the training targets."""
        with self.lock:
            return self.encoder.encode(list(texts)).float().cpu()

    def embed_text(self, text: str) -> Tensor:
        """One query's float32 `[dim]` embedding; the last CACHED_TEXTS distinct queries are kept."""
        text = check_text(text)
        with self.lock:
            return self._texts.get(text, lambda: self.embed_texts([text])[0])

    def embed_images(self, images: Sequence[ImageInput]) -> Tensor:
        """float32 `[len(images), dim]` unit rows on the CPU, decoded and cropped as the gallery's images are; a
        batch of `batch_size` decoded at a time."""
        size, step = self.ckpt.data["cache_image_size"], self.ckpt.batch_size
        chunks = [torch.empty(0, self.ckpt.embed_dim)]
        for s in range(0, len(images), step):
            chunks.append(self.embed_squares(np.stack([to_square(image, size) for image in images[s : s + step]])))
        return torch.cat(chunks)

    def embed_squares(self, squares: np.ndarray) -> Tensor:
        """float32 `[n, dim]` unit rows of uint8 `[n, S, S, 3]` squares as the image cache holds them (`to_square`)."""
        with self.lock:
            return embed_images(self.ckpt, squares)

    def warm(self) -> None:
        """Build now what the first queries would otherwise build: both galleries, the caption lookups, the text
        tower (loaded and run once)."""
        _ = self.images, self.captions, self._rows_by_id, self._image_positions, self._captions_by_text
        self.embed_texts(["a photo"])

    def embed_image(self, image: ImageInput | int) -> Tensor:
        """One image's `[dim]` embedding: an image input, or the id of a gallery image (its gallery row)."""
        if isinstance(image, int | np.integer) and not isinstance(image, bool):
            self.row(image)  # not in the split at all: say so
            position = self._image_positions.get(int(image))
            if position is None:
                raise NotInGallery(f"image {image} of {self.split.name} could not be read when the gallery was built")
            return self.images.embeddings[position].float()
        return self.embed_images([image])[0]

    # -- search --------------------------------------------------------------------------------------------------------
    def search_text(self, text: str, k: int = 10) -> list[ImageMatch]:
        """The top-k images of the gallery for a text, best first (fewer when the gallery holds fewer)."""
        return self.search_embedding(self.embed_text(text), k, "images")

    def search_image(
        self, image: ImageInput | int, k: int = 10, target: Target = "captions", distinct: bool = False
    ) -> list[Any]:
        """The top-k captions (`target="captions"`: CaptionMatch) or images (ImageMatch) of the gallery for an image:
        an image input, or the id of a gallery image. `distinct`: see `search_embedding`."""
        check_target(target)
        return self.search_embedding(self.embed_image(image), k, target, distinct)

    def search_embedding(self, query: Tensor, k: int, target: Target, distinct: bool = False) -> list[Any]:
        """The top-k matches in the `target` gallery of a `[dim]` query embedding. `distinct` (captions): a caption
        whose text (case, spacing, final full stop aside) repeats a better-ranked one is left out, and the next
        distinct one takes its rank (clip-retrieval's de-duplication; many images share a caption in the demo)."""
        check_target(target)
        if k < 1:
            raise ClipLabError(f"k must be at least 1, not {k}")
        gallery = self.images if target == "images" else self.captions
        distinct = distinct and target == "captions"  # an image is in its gallery once
        want = min(k, len(gallery))
        while True:
            with self.lock:
                scores, positions = gallery.index.top_k(query, want)
            rows = gallery.rows[positions].tolist()
            if not distinct:
                break
            kept, seen = [], set()
            for score, j in zip(scores, rows):
                text = normalized(self.split.captions[j])
                if text not in seen:
                    seen.add(text)
                    kept.append((score, j))
            if len(kept) >= k or want == len(gallery):
                scores, rows = [s for s, _ in kept[:k]], [j for _, j in kept[:k]]
                break
            want = min(len(gallery), want * 4)  # repeats filled the window: look further down the ranking
        make = self._image_match if target == "images" else self._caption_match
        return [make(rank, score, row) for rank, (score, row) in enumerate(zip(scores, rows), 1)]

    def _image_match(self, rank: int, score: float, i: int) -> ImageMatch:
        split, start = self.split, self.split.caption_start
        return ImageMatch(
            rank, score, int(split.image_ids[i]), split.file_names[i], split.captions[start[i] : start[i + 1]]
        )

    def _caption_match(self, rank: int, score: float, j: int) -> CaptionMatch:
        split = self.split
        i = int(split.caption_image[j])
        return CaptionMatch(
            rank, score, split.captions[j], int(split.caption_ids[j]), int(split.image_ids[i]), split.file_names[i]
        )

    # -- zero-shot -----------------------------------------------------------------------------------------------------
    def class_embeddings(self, classes: Sequence[str], templates: Sequence[str] | None = None) -> Tensor:
        """`[n_classes, dim]` prompt-ensemble embeddings (zeroshot.class_embeddings), kept per class set."""
        classes = zeroshot.check_classes(classes)
        templates = zeroshot.check_templates(list(templates) if templates is not None else self.default_templates)
        with self.lock:
            return self._class_sets.get(
                (tuple(classes), tuple(templates)),
                # a sigmoid-scored model (a bias) averages its logits over templates: see zeroshot.class_embeddings
                lambda: zeroshot.class_embeddings(self.encoder, classes, templates, self.ckpt.logit_bias is None),
            )

    @cached_property
    def default_templates(self) -> list[str]:
        """The packaged prompt templates (configs/prompts.yaml)."""
        return zeroshot.load_templates(zeroshot.TEMPLATES)

    def classify(
        self, image: ImageInput | int, classes: Sequence[str], templates: Sequence[str] | None = None
    ) -> Classification:
        """Zero-shot classes of one image (an image input or a gallery image id) among `classes`."""
        return self.classify_embeddings(self.embed_image(image)[None], classes, templates)[0]

    def classify_embeddings(
        self, embeddings: Tensor, classes: Sequence[str], templates: Sequence[str] | None = None
    ) -> list[Classification]:
        """Zero-shot classes of each row of `[n, dim]` image embeddings."""
        classes = zeroshot.check_classes(classes)
        scores = zeroshot.class_scores(embeddings, self.class_embeddings(classes, templates))
        probs = zeroshot.class_probabilities(scores, self.ckpt.logit_scale, self.ckpt.logit_bias)
        out = []
        for top, s, p in zip(zeroshot.top_classes(scores), scores.tolist(), probs.tolist()):
            tied = [classes[j] for j in top] if len(top) > 1 else []
            out.append(
                Classification(
                    None if tied else classes[top[0]],
                    tied,
                    {c: round(v, 5) for c, v in zip(classes, p)},
                    {c: round(v, 5) for c, v in zip(classes, s)},
                )
            )
        return out


def check_text(text: str) -> str:
    """A query stripped of surrounding space; one ClipLabError line when nothing is left."""
    if not isinstance(text, str) or not text.strip():
        raise ClipLabError("empty query: give some words, e.g. 'a red circle'")
    return text.strip()


def check_target(target: str) -> None:
    if target not in ("images", "captions"):
        raise ClipLabError(f"target must be 'images' or 'captions', not {target!r}")


def to_square(image: ImageInput, size: int) -> np.ndarray:
    """An image input -> `[size, size, 3]` uint8, decoded exactly as the image cache decodes the gallery's images."""
    if isinstance(image, str | Path):
        return read_image(image, size)
    if isinstance(image, bytes | bytearray):
        try:
            with Image.open(io.BytesIO(image)) as img:
                return image_cache.square_pil(img, size)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ClipLabError(f"cannot read the image ({reason(e)}); send a JPEG, PNG or WebP file") from e
    if isinstance(image, Image.Image):
        return image_cache.square_pil(image, size)
    raise ClipLabError(f"an image is a PIL image, a file path or the file's bytes, not {type(image).__name__}")
