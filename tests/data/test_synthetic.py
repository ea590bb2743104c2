"""The demo's tiny CLIP: every loader takes its folder, and its text tower is the one the recorded demo results used."""

import json

import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionModelWithProjection,
)

from clip_lab.data.synthetic import make_clip_model, vocabulary
from clip_lab.models.text import TextEncoder

CAPTIONS = ["a red circle", "two shapes: a green cross and a black diamond", "a small white square on the right"]


def format_1_text_tower(seed: int) -> CLIPTextModelWithProjection:
    """The demo's text tower as format 1 (the text-only `clip_text_tiny`) drew it; frozen here on purpose."""
    vocab = {w: i for i, w in enumerate(vocabulary())}
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=32,
        projection_dim=128,
        bos_token_id=vocab["<bos>"],
        eos_token_id=vocab["<eos>"],
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(config)


def test_text_tower_is_bit_identical_to_the_format_1_demo_model(tmp_path):
    make_clip_model(tmp_path / "clip", seed=3)
    loaded = CLIPTextModelWithProjection.from_pretrained(tmp_path / "clip").state_dict()
    reference = format_1_text_tower(seed=3).state_dict()
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    # and so the demo's caption embeddings: the same through the encoder the caches use
    old = tmp_path / "clip_text_tiny"
    format_1_text_tower(seed=3).save_pretrained(old)
    AutoTokenizer.from_pretrained(tmp_path / "clip").save_pretrained(old)
    assert torch.equal(
        TextEncoder(str(tmp_path / "clip"), 32).encode(CAPTIONS), TextEncoder(str(old), 32).encode(CAPTIONS)
    )


def test_folder_loads_as_a_full_clip(clip_model, demo_root):
    assert (demo_root / "clip_tiny").is_dir() and json.loads((demo_root / "DONE.json").read_text())["format"] == 3
    assert (demo_root / "bert_tiny" / "config.json").is_file()
    vision = CLIPVisionModelWithProjection.from_pretrained(clip_model).config
    text = CLIPTextModelWithProjection.from_pretrained(clip_model).config
    assert AutoConfig.from_pretrained(clip_model).projection_dim == vision.projection_dim == text.projection_dim == 128
    assert (vision.image_size, vision.patch_size, vision.hidden_size, vision.num_hidden_layers) == (64, 8, 128, 2)
    processor = CLIPImageProcessor.from_pretrained(clip_model)
    assert processor.size["shortest_edge"] == 64
    assert (processor.crop_size["height"], processor.crop_size["width"]) == (64, 64)
    assert list(processor.image_mean) == [0.48145466, 0.4578275, 0.40821073]  # OpenAI's
    assert list(processor.image_std) == [0.26862954, 0.26130258, 0.27577711]
    assert AutoTokenizer.from_pretrained(clip_model)("a red circle")["input_ids"][0] == vocabulary().index("<bos>")
