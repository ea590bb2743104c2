"""Tiny pretrained models of each family the tests write (CLIP, SigLIP, BLIP, ALIGN from transformers; OpenCLIP in its
own local-dir format), and what each model's own API says of images and texts: the references the tests compare with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clip_lab.data import synthetic

FAMILIES = ("clip", "siglip", "blip", "align", "open_clip")
# the side each tiny model's processor keeps without resampling (ALIGN's then crops the central 32)
NATIVE = {"clip": 64, "siglip": 32, "blip": 32, "align": 40, "open_clip": 32}


def make_family(family: str, root: Path, demo_root: Path) -> str:
    """The name (`hf:<folder>` or `open_clip:local-dir:<folder>`) of a tiny model of `family` written under `root`."""
    if family == "clip":
        return f"hf:{demo_root / 'clip_tiny'}"  # the demo's own: full CLIPModel, tokenizer and processor
    path = root / family
    if not path.exists():
        if family == "open_clip":
            synthetic.make_open_clip_model(path)
        else:
            getattr(synthetic, f"make_{family}_model")(path)
    return f"open_clip:local-dir:{path}" if family == "open_clip" else f"hf:{path}"


def folder(name: str) -> str:
    return name.removeprefix("hf:").removeprefix("open_clip:local-dir:")


class Own:
    """A model of one family read through its own library only: its processor or transform, its tokenizer, its
    image and text features, its logits and probabilities."""

    def __init__(self, family: str, name: str) -> None:
        self.family, self.path = family, folder(name)
        if family == "open_clip":
            import open_clip

            self.model, _, self.transform = open_clip.create_model_and_transforms(f"local-dir:{self.path}")
            self.tokenizer = open_clip.get_tokenizer(f"local-dir:{self.path}")
            self.model.eval()
            return
        import transformers
        from transformers import AutoImageProcessor, AutoTokenizer

        cls = {"clip": "CLIPModel", "siglip": "SiglipModel", "blip": "BlipForImageTextRetrieval", "align": "AlignModel"}
        self.model = getattr(transformers, cls[family]).from_pretrained(self.path).eval()
        self.processor = AutoImageProcessor.from_pretrained(self.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)

    def pixels(self, squares: np.ndarray) -> torch.Tensor:
        """The model's pixel values of uint8 `[N, S, S, 3]` images, by its own processor on PIL images."""
        images = [Image.fromarray(a) for a in squares]
        if self.family == "open_clip":
            return torch.stack([self.transform(i) for i in images])
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.family == "open_clip":
            return {"text": self.tokenizer(texts)}
        n = getattr(self.model.config, "text_config", self.model.config).max_position_embeddings
        if self.family == "siglip":  # as SigLIP was trained: padded to the full length, no mask
            ids = self.tokenizer(texts, padding="max_length", truncation=True, max_length=n, return_tensors="pt")
            return {"input_ids": ids["input_ids"]}
        return dict(self.tokenizer(texts, padding=True, truncation=True, max_length=n, return_tensors="pt"))

    @torch.no_grad()
    def image_features(self, squares: np.ndarray) -> torch.Tensor:
        """Unit image embeddings: `get_image_features` (`encode_image`; BLIP's retrieval ITC side)."""
        px = self.pixels(squares)
        m = self.model
        if self.family == "open_clip":
            out = m.encode_image(px)
        elif self.family == "blip":
            out = m.vision_proj(m.vision_model(pixel_values=px).last_hidden_state[:, 0])
        else:
            out = m.get_image_features(pixel_values=px)
        return F.normalize(getattr(out, "pooler_output", out), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        m, t = self.model, self.tokens(texts)
        if self.family == "open_clip":
            out = m.encode_text(t["text"])
        elif self.family == "blip":
            out = m.text_proj(m.text_encoder(**t).last_hidden_state[:, 0])
        else:
            out = m.get_text_features(**t)
        return F.normalize(getattr(out, "pooler_output", out), dim=-1)

    @torch.no_grad()
    def probabilities(self, squares: np.ndarray, texts: list[str]) -> torch.Tensor:
        """Each image's probability of each text, from the model's own forward: a softmax over the texts of its
        logits, or SigLIP's sigmoid of its (biased) logits; BLIP's retrieval forward gives cosines (its ITC score),
        scaled by BLIP's temperature."""
        px, t, m = self.pixels(squares), self.tokens(texts), self.model
        if self.family == "open_clip":
            image, text, scale = m(px, t["text"])[:3]
            return (scale * image @ text.T).softmax(dim=-1)
        if self.family == "blip":
            cosines = torch.stack([m(**t, pixel_values=p[None], use_itm_head=False).itm_score[0] for p in px])
            return (cosines * float(torch.tensor(m.config.logit_scale_init_value).exp())).softmax(dim=-1)
        logits = m(**t, pixel_values=px).logits_per_image
        return torch.sigmoid(logits) if self.family == "siglip" else logits.softmax(dim=-1)
