"""The frozen image tower: CLIP's own image embedding from uint8 squares, its pooled features, frozen, clear errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel, CLIPTextModelWithProjection

from clip_lab.data.coco import load_coco_split
from clip_lab.data.image_cache import decode_pil
from clip_lab.errors import ClipLabError
from clip_lab.models.vision import HFImageTower


@pytest.fixture(scope="module")
def tower(clip_model):
    return HFImageTower(clip_model)


def squares(demo_root, size, n=6):
    """`n` demo images' central squares at `size` (as the image cache holds them), the first one pure noise."""
    split = load_coco_split(demo_root, "val2014")
    arr = np.stack([decode_pil(split.image_path(i), size) for i in range(n)])
    arr[0] = np.random.default_rng(0).integers(0, 256, arr[0].shape, dtype=np.uint8)  # every pixel level
    return arr


def clip_reference(clip_model, arr):
    """What CLIP itself gives for these images: its processor on PIL images, then `get_image_features`."""
    processor = CLIPImageProcessor.from_pretrained(clip_model)
    model = CLIPModel.from_pretrained(clip_model).eval()
    pixels = processor(images=[Image.fromarray(a) for a in arr], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
        pooled = model.vision_model(pixel_values=pixels).pooler_output
    out = out if isinstance(out, torch.Tensor) else out.pooler_output  # a tensor before transformers 5.x
    return pooled, F.normalize(out, dim=-1), model


def test_embeds_are_clips_image_embedding(tower, clip_model, demo_root):
    # at the model's own input size no resampling happens on either side: only normalization and the model remain
    arr = squares(demo_root, tower.input_size)
    pooled, embeds = tower(torch.from_numpy(arr).permute(0, 3, 1, 2))
    ref_pooled, ref_embeds, model = clip_reference(clip_model, arr)
    assert pooled.shape == (6, tower.feature_dim) and embeds.shape == (6, tower.embed_dim)
    assert pooled.dtype == embeds.dtype == torch.float32
    torch.testing.assert_close(embeds, ref_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, ref_pooled, atol=1e-5, rtol=1e-5)
    # pooled is what the visual projection consumes
    torch.testing.assert_close(
        F.normalize(pooled @ model.visual_projection.weight.T, dim=-1), embeds, atol=1e-5, rtol=0
    )


def test_larger_squares_are_resized_as_clip_does(tower, clip_model, demo_root):
    arr = squares(demo_root, 2 * tower.input_size + 8)
    pooled, embeds = tower(torch.from_numpy(arr).permute(0, 3, 1, 2))
    assert pooled.shape == (6, tower.feature_dim) and torch.allclose(embeds.norm(dim=1), torch.ones(6))
    # CLIP's processor resamples with PIL or torchvision: pixels agree within a couple of uint8 levels
    _, ref_embeds, _ = clip_reference(clip_model, arr)
    assert (embeds * ref_embeds).sum(1).min() > 0.999
    # a batch's rows are independent of each other
    torch.testing.assert_close(tower(torch.from_numpy(arr[2:3]).permute(0, 3, 1, 2))[1], embeds[2:3], atol=1e-5, rtol=0)


def test_tower_is_frozen(tower):
    assert not any(p.requires_grad for p in tower.parameters())
    tower.train()
    assert not tower.training and not tower.model.training
    assert not tower.state_dict().keys() - {k for k, _ in tower.named_parameters()}  # mean/std are not weights


def test_missing_or_text_only_model_fails_with_instructions(monkeypatch, tmp_path, text_model):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ClipLabError, match="not in the local Hugging Face cache"):
        HFImageTower("openai/clip-vit-base-patch32")
    with pytest.raises(ClipLabError, match="not a complete Hugging Face model directory"):
        HFImageTower(str(tmp_path))
    # a text tower alone (like the old demo model) would give a random image tower: refused
    CLIPTextModelWithProjection.from_pretrained(text_model).save_pretrained(tmp_path / "text_only")
    CLIPImageProcessor.from_pretrained(text_model).save_pretrained(tmp_path / "text_only")
    with pytest.raises(ClipLabError, match="would stay random"):
        HFImageTower(str(tmp_path / "text_only"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_bf16_matches_cpu(tower, demo_root):
    images = torch.from_numpy(squares(demo_root, 72)).permute(0, 3, 1, 2)
    cpu_pooled, cpu_embeds = tower(images)
    gpu = HFImageTower(tower.name).cuda()
    pooled, embeds = gpu(images.cuda())
    assert pooled.dtype == embeds.dtype == torch.float32 and embeds.device.type == "cuda"
    assert (embeds.cpu() * cpu_embeds).sum(1).min() > 0.99
    torch.testing.assert_close(pooled.cpu(), cpu_pooled, atol=0.1, rtol=0.05)
