"""Trainable text encoders (a word-level LSTM, a fine-tuned Hugging Face transformer), each with its own tokenizer.

They are the other path of the text side: the default frozen CLIP tower embeds every caption once into a cache
(`clip_lab.models.text`); these encode captions inside the training step, from token matrices tokenized once per split.
A token matrix is int32 `[n, max_length]`, padded with 0 at the end; no real token is 0, so the mask is `tokens > 0`
and a row of zeros (an image without captions in the loader) is recognisable.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clip_lab.errors import ClipLabError
from clip_lab.models.text import load_model, load_pretrained, tokenizer_unknown_words

log = logging.getLogger(__name__)

LSTM = "lstm"
PAD, UNK = 0, 1  # the LSTM vocabulary's reserved ids; words start at 2
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")  # lower-cased words and numbers; punctuation carries little in captions


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """Mean of `states [B, L, D]` over the positions where `mask [B, L]` is true (zero for an all-false row)."""
    mask = mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1)


class TextTower(nn.Module):
    """What the module and the inference jobs use of a trainable text encoder: `tokenize`, `forward`, `encode`,
    `unknown_words`.

    `body` holds the parameters trained at `model.text_lr`; `proj` (into the shared embedding space) trains at
    `model.lr` like the image head.
    """

    max_length: int
    dim: int
    body: nn.Module
    proj: nn.Module

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        raise NotImplementedError

    def unknown_words(self, texts: Sequence[str]) -> list[str]:
        """The words of `texts` (each once) that tokenize to unknown tokens only, as `TextEncoder.unknown_words`."""
        raise NotImplementedError

    def features(self, tokens: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, tokens: Tensor) -> Tensor:
        """int `[B, max_length]` token rows -> L2-normalized float32 `[B, dim]` embeddings."""
        return F.normalize(self.proj(self.features(tokens)).float(), dim=-1)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 1024, progress: bool = False) -> Tensor:
        """Embed `texts` -> float32 `[len(texts), dim]`, L2-normalized, on the tower's device (queries, prompts and
        evaluation galleries go through the very function that built the training targets)."""
        device = next(self.parameters()).device
        tokens = self.tokenize(texts)
        return self.encode_tokens(tokens.to(device), batch_size)

    @torch.no_grad()
    def encode_tokens(self, tokens: Tensor, batch_size: int = 1024) -> Tensor:
        """`forward` in eval mode over batches of a token matrix (on the tower's device), bf16 autocast on CUDA."""
        was_training = self.training
        self.eval()
        cuda = tokens.device.type == "cuda"
        out = [torch.empty(0, self.dim, device=tokens.device)]
        for chunk in tokens.split(batch_size):
            with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=cuda):
                out.append(self(chunk))
        self.train(was_training)
        return torch.cat(out)

    @staticmethod
    def _warn_truncated(n: int, total: int, max_length: int, name: str) -> None:
        if n:
            log.warning(
                "%d of %d texts are longer than %d tokens and were truncated (%s; model.text_max_length "
                "raises the limit)",
                n,
                total,
                max_length,
                name,
            )


class LSTMTextTower(TextTower):
    """Word embeddings -> a bidirectional LSTM -> the mean of its states over the caption's words -> a Linear.

    The vocabulary is the `vocab_size - 2` most frequent words of the training captions (`fit_vocabulary`); it is
    not a parameter, so the module stores it in the checkpoint beside the weights. The backward direction runs on
    each caption's words reversed in place (padding stays at the end), so padding never reaches a word's state and
    no per-step lengths travel to the host (as `pack_padded_sequence` would need).
    """

    def __init__(
        self, vocab_size: int = 10000, width: int = 512, layers: int = 1, dim: int = 512, max_length: int = 32
    ) -> None:
        super().__init__()
        if vocab_size < 3 or width < 2 or width % 2:
            raise ClipLabError(f"LSTM text encoder: need vocab_size >= 3 and an even width, got {vocab_size}, {width}")
        self.vocab_size, self.max_length, self.dim = vocab_size, max_length, dim
        self.body = nn.ModuleDict(
            {
                "embedding": nn.Embedding(vocab_size, width, padding_idx=PAD),
                "ahead": nn.LSTM(width, width // 2, layers, batch_first=True),
                "behind": nn.LSTM(width, width // 2, layers, batch_first=True),
            }
        )
        self.proj = nn.Linear(width, dim)
        self.vocabulary: list[str] = []  # index i + 2 is vocabulary[i]
        self._index: dict[str, int] = {}

    def fit_vocabulary(self, captions: Sequence[str]) -> None:
        """The most frequent words of `captions` (ties broken alphabetically, so the vocabulary is reproducible)."""
        counts = Counter(w for c in captions for w in words(c))
        ranked = sorted(counts, key=lambda w: (-counts[w], w))[: self.vocab_size - 2]
        self.set_vocabulary(ranked)
        covered = sum(counts[w] for w in ranked) / max(1, sum(counts.values()))
        log.info(
            "LSTM vocabulary: %d of %d distinct words of %d training captions (%.2f%% of word occurrences; the "
            "rest read as <unk>)",
            len(ranked),
            len(counts),
            len(captions),
            100 * covered,
        )

    def set_vocabulary(self, vocabulary: Sequence[str]) -> None:
        if len(vocabulary) > self.vocab_size - 2:
            raise ClipLabError(
                f"a vocabulary of {len(vocabulary)} words does not fit model.vocab_size "
                f"{self.vocab_size} (two ids are reserved)"
            )
        self.vocabulary = list(vocabulary)
        self._index = {w: i + 2 for i, w in enumerate(self.vocabulary)}

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        if not self.vocabulary:
            raise RuntimeError("the LSTM text encoder has no vocabulary: fit_vocabulary on the training captions first")
        out = torch.zeros(len(texts), self.max_length, dtype=torch.int32)
        truncated = 0
        for i, text in enumerate(texts):
            ids = [self._index.get(w, UNK) for w in words(text)]
            truncated += len(ids) > self.max_length
            ids = ids[: self.max_length]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
        self._warn_truncated(truncated, len(texts), self.max_length, "LSTM words")
        return out

    def unknown_words(self, texts: Sequence[str]) -> list[str]:
        """The words of `texts` (lower-cased, as `tokenize` reads them, each once) outside the vocabulary: UNK."""
        return list(dict.fromkeys(w for text in texts for w in words(text) if w not in self._index))

    def features(self, tokens: Tensor) -> Tensor:
        mask = tokens > 0
        lengths = mask.sum(1, keepdim=True)
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        # position t of the reversed caption holds word n-1-t; padding positions map to themselves
        reverse = torch.where(positions < lengths, lengths - 1 - positions, positions)
        x = self.body["embedding"](tokens)
        ahead, _ = self.body["ahead"](x)
        behind, _ = self.body["behind"](x.gather(1, reverse.unsqueeze(-1).expand_as(x)))
        behind = behind.gather(1, reverse.unsqueeze(-1).expand_as(behind))  # the reversal is its own inverse
        return masked_mean(torch.cat([ahead, behind], dim=-1), mask)


class TransformerTextTower(TextTower):
    """A Hugging Face encoder (e.g. `distilbert-base-uncased`) fine-tuned end to end: the mean of its last hidden
    states over the caption's tokens -> a Linear into the shared space.

    Mean pooling rather than the first ([CLS]) token: DistilBERT was trained without a sentence-level objective, so
    its [CLS] state carries no sentence summary until fine-tuning puts one there. `pretrained=False` builds the
    architecture from the config alone (loading a checkpoint: its weights replace them anyway).
    """

    def __init__(self, name: str, dim: int = 512, max_length: int = 32, pretrained: bool = True) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.name, self.max_length, self.dim = name, max_length, dim
        self.tokenizer = load_pretrained(AutoTokenizer, name)
        self.tokenizer.padding_side = "right"  # token rows keep their padding at the end (see the module docstring)
        if pretrained:
            self.body = load_model(AutoModel, name)
        else:
            self.body = AutoModel.from_config(load_pretrained(AutoConfig, name))
        self.body.train()  # from_pretrained leaves it in eval mode, and Lightning keeps modules' modes: dropout on
        config = self.body.config
        if getattr(config, "is_decoder", False) or "clip" in config.model_type:
            raise ClipLabError(
                f"{name} is a {config.model_type} model; model.text_encoder takes a bidirectional "
                "encoder such as distilbert-base-uncased (the frozen CLIP tower is the default: "
                "model.text_encoder: null)"
            )
        limit = getattr(config, "max_position_embeddings", max_length)
        if max_length > limit:
            raise ClipLabError(f"model.text_max_length {max_length} exceeds {name}'s {limit} positions")
        self.proj = nn.Linear(config.hidden_size, dim)

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        enc = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        ids, mask = enc["input_ids"], enc["attention_mask"].bool()
        full = mask[:, -1].nonzero().flatten().tolist()  # rows that fill every position: some were cut
        if full:
            lengths = [len(x) for x in self.tokenizer([texts[i] for i in full])["input_ids"]]
            self._warn_truncated(sum(n > self.max_length for n in lengths), len(texts), self.max_length, self.name)
        return ((ids + 1) * mask).to(torch.int32)  # shifted by one: 0 is padding, whatever the tokenizer's pad id

    def unknown_words(self, texts: Sequence[str]) -> list[str]:
        return tokenizer_unknown_words(self.tokenizer, texts)

    def features(self, tokens: Tensor) -> Tensor:
        mask = tokens > 0
        states = self.body(input_ids=(tokens.long() - 1).clamp(min=0), attention_mask=mask.long()).last_hidden_state
        return masked_mean(states, mask)


def build_text_tower(
    name: str,
    dim: int,
    max_length: int = 32,
    vocab_size: int = 10000,
    width: int = 512,
    layers: int = 1,
    pretrained: bool = True,
) -> TextTower:
    """`"lstm"`: a word-level LSTM trained from scratch; anything else: a Hugging Face encoder id or directory."""
    if name == LSTM:
        return LSTMTextTower(vocab_size, width, layers, dim, max_length)
    return TransformerTextTower(name, dim, max_length, pretrained)
