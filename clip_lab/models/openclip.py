"""OpenCLIP models (`open_clip:<arch>:<tag or file>`, `open_clip:hf-hub:<repo>`, `open_clip:local-dir:<folder>`) as
clip_lab's frozen text and image towers, read through the `open_clip` library's own model, tokenizer and preprocessing.

`open_clip_torch` is an optional extra (`pip install clip-lab[open_clip]`), imported only when such a name is used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clip_lab.errors import ClipLabError
from clip_lab.files import sha256_file, sha256_folder
from clip_lab.models.text import _check_hub_reachable, tokenizer_unknown_words
from clip_lab.models.vision import ImageTower, Preprocess

log = logging.getLogger(__name__)

PREFIX = "open_clip:"
SCHEMAS = ("hf-hub:", "local-dir:")  # open_clip's own prefixes: the name is the whole model, no pretrained tag


def is_open_clip(name: str) -> bool:
    return str(name).startswith(PREFIX)


def parse(name: str) -> tuple[str, str | None]:
    """`open_clip:ViT-B-32:openai` -> ("ViT-B-32", "openai"); `open_clip:hf-hub:org/repo` -> ("hf-hub:org/repo", None).

    The part after the architecture is a pretrained tag of open_clip's list or a weights file."""
    rest = name.removeprefix(PREFIX)
    if rest.startswith(SCHEMAS):
        return rest, None
    arch, _, pretrained = rest.partition(":")
    if not arch or not pretrained:
        raise ClipLabError(
            f"{name}: an OpenCLIP model is open_clip:<arch>:<pretrained tag or weights file> (e.g. "
            "open_clip:ViT-B-32:openai), open_clip:hf-hub:<repo> or open_clip:local-dir:<folder>"
        )
    return arch, pretrained


def library() -> Any:
    try:
        import open_clip
    except ImportError as e:
        raise ClipLabError(
            f"OpenCLIP models need the open_clip library, which is not installed ({e.name}): "
            "`pip install open_clip_torch` (or `pip install clip-lab[open_clip]`)"
        ) from e
    return open_clip


@contextlib.contextmanager
def hub_access(name: str, local: bool = False) -> Iterator[None]:
    """Loads inside read the Hugging Face cache only when the hub cannot be reached (open_clip's downloads would
    otherwise retry for ~50 s before failing); any failure becomes one ClipLabError line naming what to provide.
    `local`: the model is a folder or file, nothing to download (the hub is not probed)."""
    import huggingface_hub.constants as hub

    offline = hub.HF_HUB_OFFLINE
    if not offline and not local:
        try:
            _check_hub_reachable()
        except OSError:
            offline = True
    saved, hub.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE, offline  # read at each request: the documented offline switch
    # open_clip logs with logging.info/error, which install a stderr handler on the root logger (logging.basicConfig)
    # when it has none: every clip_lab line after would print twice, and its errors come back as the one line below
    quiet = logging.NullHandler()
    logging.getLogger().addHandler(quiet)
    try:
        yield
    except ClipLabError:
        raise
    except Exception as e:  # a missing file, no network, a foreign checkpoint: all one thing to the user
        where = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise ClipLabError(
            f"cannot load {name} ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})"
            f"{' with the hub unreachable' if offline else ''}. Fix: on a machine with internet load it once "
            f'(python -c "import open_clip; open_clip.create_model_and_transforms(...)") and copy the Hugging '
            f"Face cache ({where}) here, or pass a weights file (open_clip:<arch>:<file>) or "
            "open_clip:local-dir:<folder with open_clip_config.json and weights>"
        ) from e
    finally:
        hub.HF_HUB_OFFLINE = saved
        logging.getLogger().removeHandler(quiet)


def load(name: str) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model in eval mode, frozen; its tokenizer; its preprocessing config) of an `open_clip:` name.

    Weights are required (open_clip would otherwise go on with random ones when a download fails), and a tag trained
    with QuickGELU (OpenAI's, LAION-400M's, ...) gets it: open_clip builds the architecture's own activation and
    only warns when the tag's differs, which would give plausible but wrong embeddings."""
    open_clip = library()
    arch, pretrained = parse(name)
    tag = {}
    if pretrained is not None and not Path(pretrained).is_file():
        tag = open_clip.get_pretrained_cfg(arch, pretrained)
        if not tag:
            known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
            raise ClipLabError(
                f"{name}: {pretrained!r} is neither a weights file nor a pretrained tag of open_clip's {arch} "
                f"(its tags: {known})"
            )
    local = arch.startswith("local-dir:") or (pretrained is not None and not tag)
    with hub_access(name, local):
        model = open_clip.create_model(
            arch,
            pretrained=pretrained,
            require_pretrained=True,
            force_quick_gelu=bool(tag.get("quick_gelu", False)),
        )
        tokenizer = open_clip.get_tokenizer(arch)
    return model.eval().requires_grad_(False), tokenizer, open_clip.get_model_preprocess_cfg(model)


def model_config(name: str) -> dict[str, Any]:
    """The model config (`embed_dim`, `vision_cfg`, `text_cfg`) of an `open_clip:` name, without loading weights."""
    open_clip = library()
    arch, _ = parse(name)
    if arch.startswith("local-dir:"):
        path = Path(arch.removeprefix("local-dir:")) / "open_clip_config.json"
        if not path.is_file():
            raise ClipLabError(f"{name}: {path} does not exist; a local-dir: folder holds open_clip_config.json")
        return json.loads(path.read_text())["model_cfg"]
    if arch.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download

        with hub_access(name):
            path = hf_hub_download(arch.removeprefix("hf-hub:"), "open_clip_config.json")
        return json.loads(Path(path).read_text())["model_cfg"]
    config = open_clip.get_model_config(arch)
    if config is None:
        raise ClipLabError(f"{name}: open_clip has no architecture {arch!r} (open_clip.list_models() lists them)")
    return config


def embed_dim(name: str) -> int:
    return int(model_config(name)["embed_dim"])


def fingerprint(name: str) -> str:
    """What identifies the weights: a content hash of a local folder or weights file; for a hub repo or a tag (whose
    weights open_clip keeps in a hub repo) the revision in the Hugging Face cache, as for `hf:` models."""
    arch, pretrained = parse(name)
    folder = Path(arch.removeprefix("local-dir:")) if arch.startswith("local-dir:") else None
    if folder is not None and folder.is_dir():
        return f"open_clip-dir:{sha256_folder(folder)}"
    if pretrained is not None and Path(pretrained).is_file():
        return f"open_clip:{arch}:sha256:{sha256_file(pretrained)}"
    if arch.startswith("hf-hub:"):
        repo, files = arch.removeprefix("hf-hub:"), ["open_clip_config.json"]
    else:  # open_clip's hub entry of a tag: "org/repo/" (its default weights files) or "org/repo/file"
        repo, file = os.path.split(library().get_pretrained_cfg(arch, pretrained).get("hf_hub", ""))
        files = [file] if file else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    return f"{name}@{_cached_revision(repo, files) if repo else 'unknown'}"


def _cached_revision(repo: str, files: list[str]) -> str:
    """The revision of `repo` whose file the Hugging Face cache holds ("unknown" when none is cached)."""
    from huggingface_hub import try_to_load_from_cache

    for file in files:
        path = try_to_load_from_cache(repo, file)
        if isinstance(path, str):
            return Path(path).parent.name
    return "unknown"


class OpenClipText(nn.Module):
    """An OpenCLIP model's frozen text tower and tokenizer, with `TextEncoder`'s interface: `encode` gives
    `encode_text`'s embeddings, L2-normalized.

    OpenCLIP's text transformers read a fixed context (`context_length`, 77 for OpenAI's): texts are tokenized to
    `max_length` (at most that) and padded to the full context, as its tokenizer pads.
    """

    def __init__(self, name: str, max_length: int = 77) -> None:
        super().__init__()
        self.name = name
        self.model, self.tokenizer, _ = load(name)
        self.model.visual = None  # the image tower is not needed here: its memory is given back
        self.context_length = int(self.model.context_length)
        self.max_length = min(max_length, self.context_length)
        with torch.no_grad():
            self.dim = int(self.model.encode_text(self._tokens([""])).shape[1])

    def train(self, mode: bool = True) -> OpenClipText:
        return super().train(False)  # frozen: dropout and friends stay off whatever the caller asks

    def unknown_words(self, texts: Sequence[str]) -> list[str]:
        """The words the tokenizer reads as its unknown token only: none for OpenAI's byte-level BPE, which has none;
        an HF tokenizer's (SigLIP's, ...) as `tokenizer_unknown_words` reads them."""
        inner = getattr(self.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers tokenizer
        return tokenizer_unknown_words(inner, texts) if inner is not None else []

    def _tokens(self, texts: Sequence[str]) -> Tensor:
        tokens = self.tokenizer(list(texts), context_length=self.max_length)
        return F.pad(tokens, (0, self.context_length - tokens.shape[1]), value=self._pad_id())

    def _pad_id(self) -> int:
        inner = getattr(self.tokenizer, "tokenizer", None)
        return int(getattr(inner, "pad_token_id", None) or 0)  # OpenAI's BPE pads with 0

    def _truncated(self, texts: Sequence[str]) -> int:
        """How many texts are longer than `max_length` tokens (start and end tokens included)."""
        inner = getattr(self.tokenizer, "tokenizer", None)
        if inner is not None:
            lengths = map(len, inner(list(texts))["input_ids"])
        else:
            lengths = (len(self.tokenizer.encode(t)) + 2 for t in texts)
        return sum(n > self.max_length for n in lengths)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 1024, progress: bool = False) -> Tensor:
        """Embed `texts` -> float32 `[len(texts), dim]`, L2-normalized, on the model's device (fp16 on CUDA)."""
        texts = list(texts)
        truncated = self._truncated(texts)
        if truncated:
            log.warning(
                "%d of %d texts are longer than max_length=%d tokens and were truncated (%s)",
                truncated,
                len(texts),
                self.max_length,
                self.name,
            )
        device = next(self.model.parameters()).device
        batches = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="encoding captions", unit="batch", disable=None)
        out = [torch.empty(0, self.dim, device=device)]
        for b in batches:
            tokens = self._tokens(texts[b : b + batch_size]).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(out)


class OpenClipImageTower(ImageTower):
    """An OpenCLIP model's frozen image tower with its own preprocessing (`preprocess_cfg`) done on tensors.

    `pooled` is the input of a Vision Transformer's projection (`visual.proj`, applied here), as CLIP's pooled output
    is; other towers (ResNets, timm models) project inside, and `pooled` is their image embedding.
    """

    def __init__(self, name: str) -> None:
        model, _, cfg = load(name)
        visual = model.visual
        proj = getattr(visual, "proj", None)
        if isinstance(proj, nn.Parameter):
            visual.proj = None  # the tower's output becomes the pooled features; self.proj projects them
        size = cfg.get("size", 224)
        side = size if isinstance(size, int) else size[0]
        if not isinstance(size, int) and size[0] != size[1]:
            raise ClipLabError(f"{name} reads {size[0]}x{size[1]} images: only square inputs are supported")
        crop = side if cfg.get("resize_mode", "shortest") == "shortest" else None  # 'squash'/'longest': whole square
        preprocess = Preprocess(side, crop, cfg.get("interpolation", "bicubic"), 1 / 255, 0.0, cfg["mean"], cfg["std"])
        scale = float(model.logit_scale.exp())
        bias = getattr(model, "logit_bias", None)
        with torch.no_grad():
            probe = visual(torch.zeros(1, 3, side, side))
        if not isinstance(probe, Tensor):  # CoCa and other towers that return their tokens as well
            raise ClipLabError(f"{name}: its image tower returns {type(probe).__name__}, not one embedding per image")
        feature_dim = int(probe.shape[1])
        embed_dim = int(proj.shape[1]) if isinstance(proj, nn.Parameter) else feature_dim
        super().__init__(name, preprocess, feature_dim, embed_dim, scale, None if bias is None else float(bias))
        self.model = visual
        self.proj = proj if isinstance(proj, nn.Parameter) else None

    def features(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.model(pixels)
        return pooled, pooled @ self.proj.to(pooled.dtype) if self.proj is not None else pooled
