"""The frozen pretrained text tower (CLIP, SigLIP, BLIP, ALIGN): one `TextEncoder.encode` for captions and queries."""

from __future__ import annotations

import itertools
import logging
import os
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clip_lab.errors import ClipLabError
from clip_lab.files import sha256_folder

log = logging.getLogger(__name__)

DEFAULT_TEXT_MODEL = "openai/clip-vit-base-patch32"
HF = "hf:"  # the prefix of a Hugging Face model's name (a hub id or a folder): optional where only those are read
# what `tokenizer_unknown_words` calls a word: a run of letters and digits. Punctuation is left out: outside a
# vocabulary (the demo's has no ".") it carries no meaning, and every "a photo of a {}." template would warn
WORD = re.compile(r"\w+")


def quiet_transformers() -> None:
    """No progress bars of transformers' own (loading and writing a few MB of local weights): a download's progress,
    which huggingface_hub draws, still shows."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_pretrained(cls: Any, name: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained(name)`: a local directory or the HF cache first, then the hub; a clear error if neither.

    Trying the cache first keeps runs offline-fast; a failed download never falls back to random weights. `name` may
    carry the `hf:` prefix that names Hugging Face models among others (`clip_lab.models.pretrained`).
    """
    quiet_transformers()
    name = name.removeprefix(HF)
    try:
        return _load_pretrained(cls, name, **kwargs)
    except ImportError as e:  # a tokenizer's own library (SigLIP's sentencepiece) is missing: say which
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClipLabError(
            f"{name} ({cls.__name__}) needs a library that is not installed: {first} "
            "(`pip install -r requirements.txt` installs sentencepiece, SigLIP's tokenizer)"
        ) from e


def _load_pretrained(cls: Any, name: str, **kwargs: Any) -> Any:
    if Path(name).is_dir():
        try:
            return cls.from_pretrained(name, **kwargs)
        except (OSError, ValueError) as e:
            raise ClipLabError(
                f"{name} is not a complete Hugging Face model directory ({e}); re-create it with "
                "`save_pretrained` or point text_model at a model id"
            ) from e
    try:
        return cls.from_pretrained(name, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass  # not in the local cache: try the hub below
    try:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise OSError("HF_HUB_OFFLINE is set")
        _check_hub_reachable()
        return cls.from_pretrained(name, **kwargs)
    except ImportError:
        raise
    except Exception as e:  # network errors come in many types; all mean the same thing to the user
        raise ClipLabError(
            f"cannot load '{name}' ({cls.__name__}): it is not in the local Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and the hub is unreachable ({type(e).__name__}). "
            f"Fix: on a machine with internet run `hf download {name}` and copy the cache here "
            f"(or set HF_HOME to it), or save the model with `save_pretrained(DIR)` and set data.text_model: DIR"
        ) from e


def load_model(cls: Any, name: str) -> nn.Module:
    """`load_pretrained(cls, name)` for a model class (one CLIP tower), refusing a checkpoint that lacks its weights.

    A full CLIP checkpoint holds both towers, so the other tower's weights are expected leftovers: transformers 5
    prints them as a long warning table, which is silenced here. Missing weights would be random, so they stop.
    """
    hf_log = logging.getLogger("transformers.modeling_utils")
    quiet = _BelowError()  # a filter, not setLevel: transformers 5 reads that logger's level to pick other checks
    hf_log.addFilter(quiet)
    try:
        # float32 whatever the checkpoint stores (transformers 5 keeps its dtype): autocast picks the precision on GPUs
        model, info = load_pretrained(cls, name, output_loading_info=True, dtype=torch.float32)
    finally:
        hf_log.removeFilter(quiet)
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        raise ClipLabError(
            f"{name} has no weights for {len(missing)} tensors of {cls.__name__} (e.g. {missing[0]}), "
            f"which would stay random. Fix: point it at a checkpoint of the whole model, both towers (a hub id, or a "
            f"folder saved from a full {cls.__name__})"
        )
    return model


def tokenizer_unknown_words(tokenizer: Any, texts: Sequence[str]) -> list[str]:
    """The words of `texts` (as written, each once) that a Hugging Face tokenizer turns into its unknown token only.

    A tokenizer without an unknown token (`unk_token_id` None) knows every word; byte-level BPE (OpenAI's CLIP) has
    one but never produces it, so it too reports none. Each word is tokenized alone: word-level and WordPiece
    tokenizers map a word the same wherever it stands.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    found = list(dict.fromkeys(w for text in texts for w in WORD.findall(text)))
    if unk is None or not found:
        return []
    ids = tokenizer(found, add_special_tokens=False)["input_ids"]
    return [w for w, i in zip(found, ids) if i and all(t == unk for t in i)]


def knows_no_word(encoder: Any, text: str) -> bool:
    """Whether `text` has words and `encoder` (anything with `unknown_words`) reads every one as unknown."""
    found = WORD.findall(text)
    return bool(found) and all(encoder.unknown_words([w]) for w in found)


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def _check_hub_reachable(timeout: float = 3.0) -> None:
    """Raise OSError within `timeout` when the hub's host cannot be reached (the hub client retries for ~30 s)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # behind a proxy a direct connection proves nothing: let the client try
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()


def text_model_fingerprint(name: str) -> str:
    """What identifies the weights behind `name`: a content hash for a local directory, the hub revision otherwise."""
    name = name.removeprefix(HF)
    if Path(name).is_dir():
        return f"dir:{sha256_folder(name)}"
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(name, "config.json")
    revision = Path(config).parent.name if isinstance(config, str) else "unknown"
    return f"hub:{name}@{revision}"


@dataclass(frozen=True)
class TextFamily:
    """How one model family's frozen text tower is loaded and read, as the family's own code reads it."""

    model_class: str  # the transformers class holding the text tower and its projection (loads a full checkpoint)
    model_types: tuple[str, ...]  # the `model_type`s of its configs: the full model's and the text tower's
    dim: Callable[[Any], int]  # the embedding width, from the config AutoConfig reads
    features: Callable[[Any, Tensor, Tensor], Tensor]  # (model, input_ids, attention_mask) -> unnormalized embeddings
    pad_to_max: bool = False  # SigLIP was trained on texts padded to its full length, attending to the padding


TEXT_FAMILIES = {
    # the projected state at the end-of-text token (CLIP's text model is causal: the first token's state is the same
    # for every caption), as CLIP trains
    "clip": TextFamily(
        "CLIPTextModelWithProjection",
        ("clip", "clip_text_model"),
        lambda c: c.projection_dim,
        lambda m, ids, mask: m(input_ids=ids, attention_mask=mask).text_embeds,
    ),
    # its head on the last position, no mask (SiglipModel.get_text_features)
    "siglip": TextFamily(
        "SiglipTextModel",
        ("siglip", "siglip_text_model"),
        lambda c: _siglip_width(getattr(c, "text_config", c)),
        lambda m, ids, mask: m(input_ids=ids).pooler_output,
        pad_to_max=True,
    ),
    # the [CLS] state through text_projection (AlignModel.get_text_features; transformers 5 returns it as an output)
    "align": TextFamily(
        "AlignModel",
        ("align",),
        lambda c: c.projection_dim,
        lambda m, ids, mask: pooled(m.get_text_features(input_ids=ids, attention_mask=mask)),
    ),
    # the [CLS] state through text_proj: the contrastive (ITC) side of BLIP's retrieval model, without its ITM head
    "blip": TextFamily(
        "BlipForImageTextRetrieval",
        ("blip",),
        lambda c: c.image_text_hidden_size,
        lambda m, ids, mask: m.text_proj(m.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]),
    ),
}


def _siglip_width(text_config: Any) -> int:
    """The width of SigLIP's text head: `projection_size` (transformers 5), else the hidden size it defaults to."""
    return getattr(text_config, "projection_size", None) or text_config.hidden_size


def pooled(output: Any) -> Tensor:
    """A `get_*_features` result as a tensor: transformers 5 wraps it in an output's `pooler_output`, 4.x does not."""
    return getattr(output, "pooler_output", output)


def model_family(config: Any, name: str) -> str:
    """The family (a key of TEXT_FAMILIES) of a Hugging Face config; one ClipLabError line naming those there are."""
    for key, family in TEXT_FAMILIES.items():
        if config.model_type in family.model_types:
            return key
    raise ClipLabError(
        f"{name} is a {config.model_type!r} model: the pretrained models clip_lab reads are of the families "
        f"{', '.join(TEXT_FAMILIES)} (a Hugging Face id or a folder saved with save_pretrained), or open_clip:..."
    )


def text_family(config: Any, name: str) -> TextFamily:
    """The TextFamily of a Hugging Face config (`model_family`)."""
    return TEXT_FAMILIES[model_family(config, name)]


def text_embed_dim(name: str) -> int:
    """The width of the text embedding, read from the model's config alone (no weights loaded)."""
    from transformers import AutoConfig

    config = load_pretrained(AutoConfig, name)
    try:
        dim = text_family(config, name).dim(config)
    except AttributeError as e:
        raise ClipLabError(f"{name}: its {config.model_type} config has no embedding width ({e})") from e
    return int(dim)


class TextEncoder(nn.Module):
    """A frozen pretrained text tower + its tokenizer; `encode` returns L2-normalized text embeddings.

    Each family's embedding is read as the family reads it (TEXT_FAMILIES): CLIP's projected end-of-text state,
    SigLIP's head on the last position over texts padded to the model's full length, BLIP's and ALIGN's projected
    [CLS] state.
    """

    def __init__(self, name: str = DEFAULT_TEXT_MODEL, max_length: int = 77) -> None:
        super().__init__()
        import transformers
        from transformers import AutoConfig, AutoTokenizer

        self.name = name
        self.family = text_family(load_pretrained(AutoConfig, name), name)
        self.tokenizer = load_pretrained(AutoTokenizer, name)
        model_class = getattr(transformers, self.family.model_class)
        self.model = load_model(model_class, name).eval().requires_grad_(False)
        text_config = getattr(self.model.config, "text_config", self.model.config)  # BLIP's model is the full one
        self.max_length = min(max_length, text_config.max_position_embeddings)
        self.full_length = int(text_config.max_position_embeddings)  # what SigLIP's texts are padded to
        self.dim = text_embed_dim(name)
        self._backend = None  # a fast tokenizer's Rust core, set to truncate exactly as the HF call would
        if getattr(self.tokenizer, "is_fast", False):
            from tokenizers import Tokenizer

            self._backend = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
            self._backend.no_padding()
            self._backend.enable_truncation(self.max_length, direction=self.tokenizer.truncation_side)

    def train(self, mode: bool = True) -> TextEncoder:
        return super().train(False)  # frozen: dropout and friends stay off whatever the caller asks

    def unknown_words(self, texts: Sequence[str]) -> list[str]:
        """The words of `texts` the tokenizer reads as its unknown token only (see `tokenizer_unknown_words`)."""
        return tokenizer_unknown_words(self.tokenizer, texts)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, truncated to `max_length` (start and end tokens included), without padding.

        Equal to `tokenizer(texts, truncation=True, max_length=...)["input_ids"]`; a fast tokenizer's Rust backend
        is called directly (all cores, no per-text Python dicts): ~3x the captions/s on COCO-sized lists.
        """
        if self._backend is None:
            full = self.tokenizer(list(texts))["input_ids"]
            ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
            truncated = sum(len(f) > len(i) for f, i in zip(full, ids))
        else:
            encode_batch = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
            encodings = encode_batch(list(texts))
            ids, truncated = [e.ids for e in encodings], sum(bool(e.overflowing) for e in encodings)
        if truncated:
            log.warning(
                "%d of %d texts are longer than max_length=%d tokens and were truncated (%s)",
                truncated,
                len(ids),
                self.max_length,
                self.name,
            )
        return ids

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 1024, progress: bool = False) -> Tensor:
        """Embed `texts` -> float32 `[len(texts), dim]`, L2-normalized, on the model's device.

        Tokenizes everything in one batched call, then encodes in batches of similar length (sorted by token count,
        so little time is spent on padding) and returns rows in the input order. On CUDA: fp16 autocast, and inputs
        go through pinned memory without host synchronization, so the GPU never waits for the Python loop.
        """
        ids = self.tokenize(texts)
        n = len(ids)
        device = next(self.model.parameters()).device
        cuda = device.type == "cuda"
        lengths = np.fromiter(map(len, ids), np.int64, n)
        tokens = np.fromiter(itertools.chain.from_iterable(ids), np.int64, int(lengths.sum()))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        order = np.argsort(lengths, kind="stable")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        def to_device(a: np.ndarray) -> Tensor:
            t = torch.from_numpy(a)
            return t.pin_memory().to(device, non_blocking=True) if cuda else t

        batches = range(0, n, batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="encoding captions", unit="batch", disable=None)
        chunks = []
        for b in batches:
            idx = order[b : b + batch_size]
            width = self.full_length if self.family.pad_to_max else int(lengths[idx[-1]])  # sorted: the last is longest
            mask = np.arange(width)[None, :] < lengths[idx, None]
            input_ids = np.full(mask.shape, pad, dtype=np.int64)
            input_ids[mask] = tokens[(starts[idx, None] + np.arange(width)[None, :])[mask]]
            with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
                emb = self.family.features(self.model, to_device(input_ids), to_device(mask.astype(np.int64)))
            chunks.append(F.normalize(emb.float(), dim=-1))
        out = torch.empty(n, self.dim, device=device)
        if n:
            out[to_device(order)] = torch.cat(chunks)
        return out
