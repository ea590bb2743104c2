"""Pretrained models of every family (CLIP, SigLIP, BLIP, ALIGN, OpenCLIP) by name: each image tower preprocesses
as the family's own processor, embeds as its own API, scores zero-shot as its own forward; names and errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from families import FAMILIES, NATIVE, Own, make_family
from PIL import Image

from clip_lab.errors import ClipLabError
from clip_lab.jobs.infer import open_checkpoint
from clip_lab.jobs.retriever import Retriever
from clip_lab.models import openclip, pretrained


@pytest.fixture(scope="module")
def models(tmp_path_factory, demo_root):
    root = tmp_path_factory.mktemp("families")
    return {f: make_family(f, root, demo_root) for f in FAMILIES}


def noise(n: int, side: int, seed: int = 0) -> np.ndarray:
    """`n` uint8 `[side, side, 3]` images: every pixel level, smooth and sharp parts."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    images[0] = np.stack(
        [ramp[None, :].repeat(side, 0), ramp[:, None].repeat(side, 1), 255 - ramp[None, :].repeat(side, 0)], -1
    )
    return images


def levels(tower, pixels: torch.Tensor) -> torch.Tensor:
    """Pixel values back to uint8 levels (undoing the normalization): differences read in levels."""
    p = tower.preprocessing
    return (pixels * tower.std + tower.mean + p.offset) / p.scale


@pytest.mark.parametrize("family", FAMILIES)
def test_preprocessing_is_the_familys_own(family, models):
    tower, own = pretrained.image_tower(models[family]), Own(family, models[family])
    native = noise(3, NATIVE[family])
    ours = tower.preprocess(torch.from_numpy(native).permute(0, 3, 1, 2))
    assert ours.shape[-1] == tower.input_size == own.pixels(native).shape[-1]
    # at the side the processor keeps, no resampling on either side: the same numbers
    torch.testing.assert_close(ours, own.pixels(native), atol=1e-5, rtol=0)
    # a larger square is resampled by both, PIL or torchvision there, torch here: within a couple of uint8 levels
    large = noise(3, 72, seed=1)
    diff = (
        levels(tower, tower.preprocess(torch.from_numpy(large).permute(0, 3, 1, 2))) - levels(tower, own.pixels(large))
    ).abs()
    assert diff.max() <= 3 and diff.mean() < 0.6, (diff.max(), diff.mean())


@pytest.mark.parametrize("family", FAMILIES)
def test_image_embedding_is_the_models_own(family, models):
    tower, own = pretrained.image_tower(models[family]), Own(family, models[family])
    images = noise(4, NATIVE[family])
    pooled, embeds = tower(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert pooled.shape == (4, tower.feature_dim) and embeds.shape == (4, tower.embed_dim)
    assert tower.embed_dim == pretrained.embed_dim(models[family])  # read from the config alone
    torch.testing.assert_close(embeds, own.image_features(images), atol=1e-5, rtol=0)
    assert not any(p.requires_grad for p in tower.parameters()) and not tower.train().training

    # the text side is not kept (the text encoder loads its own): the tower holds the image side's weights alone
    def count(module):
        return sum(p.numel() for p in module.parameters())

    if family == "open_clip":
        assert count(tower) == count(own.model.visual)
    else:
        text = sum(count(getattr(own.model, part)) for part in tower.family.text_parts)
        assert text > 0 and count(tower) == count(own.model) - text


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_shot_probabilities_are_the_models_own(family, models, demo_root, tmp_path):
    """classify through the Retriever of the bare model name: one template, so each class is one prompt, and the
    probabilities must be those of the model's own forward (SigLIP's sigmoids with its bias, the others' softmax)."""
    name, own = models[family], Own(family, models[family])
    if family == "siglip":  # a random SigLIP starts at scale 1, bias 0: give it a trained model's kind of values
        from transformers import SiglipModel

        m = SiglipModel.from_pretrained(name.removeprefix("hf:"))
        m.logit_scale.data.fill_(np.log(10.0)), m.logit_bias.data.fill_(-2.5)
        m.save_pretrained(name.removeprefix("hf:"))
        own = Own(family, name)
    side = NATIVE[family]
    ckpt = open_checkpoint(name, "cpu", data_root=str(demo_root), cache_dir=str(tmp_path), cache_image_size=side)
    r = Retriever(ckpt)
    classes, template = ["red circle", "blue square", "green triangle"], "a photo of a {}."
    images = noise(2, side)
    expected = own.probabilities(images, [template.format(c) for c in classes])
    for image, probs in zip(images, expected):
        got = r.classify(Image.fromarray(image), classes, [template])
        assert list(got.probabilities.values()) == pytest.approx(probs.tolist(), abs=2e-5)
    assert (ckpt.logit_bias is not None) == (family == "siglip")
    if family == "siglip":
        assert (ckpt.logit_scale, ckpt.logit_bias) == pytest.approx((10.0, -2.5))
        # several templates: the sigmoid of the mean of the model's own logits over them
        templates = [template, "a drawing of the {}", "{}"]
        logits = torch.stack([own.probabilities(images, [t.format(c) for c in classes]).logit() for t in templates])
        got = r.classify(Image.fromarray(images[0]), classes, templates)
        assert list(got.probabilities.values()) == pytest.approx(torch.sigmoid(logits.mean(0))[0].tolist(), abs=1e-4)


def test_open_clip_text_tower_is_encode_text(models):
    name = models["open_clip"]
    enc, own = pretrained.text_encoder(name, 77), Own("open_clip", name)
    texts = ["a red circle", "two blue squares on a green field", "a"]
    assert enc.max_length == enc.context_length == 32 and enc.dim == 48  # the model's context, not the setting's 77
    torch.testing.assert_close(enc.encode(texts, batch_size=2), own.text_features(texts), atol=1e-5, rtol=0)
    assert enc.unknown_words(["zzyzx qqq"]) == []  # OpenAI's byte-level BPE knows every word


def test_open_clip_truncates_to_a_shorter_max_length_and_says_so(models, caplog):
    enc = pretrained.text_encoder(models["open_clip"], 6)
    long = "a red circle beside a blue square beside a green triangle"
    with caplog.at_level("WARNING"):
        got = enc.encode([long, "a red circle"])
    assert "1 of 2 texts are longer than max_length=6 tokens" in caplog.text
    tokens = enc._tokens([long])
    assert tokens.shape == (1, 32) and (tokens[0, 6:] == 0).all() and tokens[0, 5] == enc.tokenizer.eot_token_id
    assert torch.allclose(got.norm(dim=1), torch.ones(2), atol=1e-5)


def test_loading_open_clip_leaves_the_root_logger_alone(models, monkeypatch):
    """open_clip's module-level logging calls would install a root handler that prints every clip_lab line again."""
    import logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in `python -m clip_lab`: nothing on the root logger
    openclip.load(models["open_clip"])
    assert root.handlers == []


def test_an_open_clip_arch_with_a_weights_file(models, tmp_path):
    """`open_clip:<arch>:<file>`: an architecture open_clip knows (a config registered here, as a user adds theirs)
    and a weights file; the same model as the folder's."""
    import json

    import open_clip

    folder = models["open_clip"].removeprefix("open_clip:local-dir:")
    config = json.loads((Path(folder) / "open_clip_config.json").read_text())
    (tmp_path / "tiny-test-clip.json").write_text(json.dumps(config["model_cfg"]))
    open_clip.add_model_config(tmp_path / "tiny-test-clip.json")
    name = f"open_clip:tiny-test-clip:{folder}/open_clip_model.safetensors"
    a = pretrained.text_encoder(name).encode(["a red circle"])
    b = pretrained.text_encoder(models["open_clip"]).encode(["a red circle"])
    torch.testing.assert_close(a, b)
    assert pretrained.fingerprint(name).startswith("open_clip:tiny-test-clip:sha256:")
    assert pretrained.embed_dim(name) == 48


def test_names():
    assert openclip.parse("open_clip:ViT-B-32:openai") == ("ViT-B-32", "openai")
    assert openclip.parse("open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K") == (
        "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        None,
    )
    assert pretrained.short_name("open_clip:ViT-B-32:openai") == "ViT-B-32-openai"
    assert (
        pretrained.short_name("open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
        == "CLIP-ViT-B-32-laion2B-s34B-b79K"
    )
    assert pretrained.short_name("hf:google/siglip-base-patch16-224") == "siglip-base-patch16-224"
    assert pretrained.is_pretrained_name("hf:x") and not pretrained.is_pretrained_name("results/t/best.ckpt")
    # one model, one cache: a fit's `openai/x` and a search's `hf:openai/x` name the same files
    assert pretrained.canonical("hf:openai/x") == pretrained.canonical("openai/x") == "openai/x"
    # a tag's or hub repo's weights are known by their revision in the Hugging Face cache (none here)
    assert pretrained.fingerprint("open_clip:ViT-B-32:openai") == "open_clip:ViT-B-32:openai@unknown"
    with pytest.raises(ClipLabError, match="open_clip:<arch>:<pretrained tag or weights file>"):
        openclip.parse("open_clip:ViT-B-32")


def test_a_tag_trained_with_quickgelu_gets_it_and_weights_are_required(monkeypatch, models, tmp_path):
    """open_clip builds ViT-B-32 with plain GELU and only warns that OpenAI's weights were trained with QuickGELU;
    and it goes on with random weights when a download fails. Both are asked for here."""
    import shutil

    import open_clip

    calls = []

    def create_model(arch, **kwargs):
        calls.append((arch, kwargs))
        raise RuntimeError("not downloaded")

    monkeypatch.setattr(open_clip, "create_model", create_model)
    monkeypatch.setattr(openclip, "_check_hub_reachable", lambda: None)
    for name in ("open_clip:ViT-B-32:openai", "open_clip:ViT-B-32:laion2b_s34b_b79k"):
        with pytest.raises(ClipLabError, match=f"cannot load {name}"):
            openclip.load(name)
    assert [(a, k["force_quick_gelu"], k["require_pretrained"]) for a, k in calls] == [
        ("ViT-B-32", True, True),
        ("ViT-B-32", False, True),
    ]
    monkeypatch.undo()
    folder = tmp_path / "no_weights"
    folder.mkdir()
    shutil.copy(Path(models["open_clip"].removeprefix("open_clip:local-dir:")) / "open_clip_config.json", folder)
    with pytest.raises(ClipLabError, match="cannot load open_clip:local-dir:.*no_weights"):
        openclip.load(f"open_clip:local-dir:{folder}")


def test_unknown_tags_and_unreachable_weights_are_one_line(monkeypatch, tmp_path):
    with pytest.raises(ClipLabError, match="'nope' is neither a weights file nor a pretrained tag .* openai"):
        openclip.load("open_clip:ViT-B-32:nope")
    with pytest.raises(ClipLabError, match="no architecture 'No-Such-Arch'"):
        pretrained.embed_dim("open_clip:No-Such-Arch:openai")
    # the hub out of reach and nothing cached: the cache is read alone (no ~50 s of retries) and the fix is named

    def unreachable():
        raise OSError("no network")

    monkeypatch.setattr(openclip, "_check_hub_reachable", unreachable)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    import time

    t0 = time.perf_counter()
    with pytest.raises(
        ClipLabError, match="cannot load open_clip:ViT-B-32:openai .*hub unreachable. Fix: .*weights file"
    ):
        openclip.OpenClipText("open_clip:ViT-B-32:openai")
    assert time.perf_counter() - t0 < 20
    with pytest.raises(
        ClipLabError, match="cannot load hf:no-such-org/no-such-model|not in the local Hugging Face cache"
    ):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        pretrained.image_tower("hf:no-such-org/no-such-model")


def test_a_model_of_no_family_is_refused_in_one_line(tmp_path):
    from transformers import BertConfig

    BertConfig().save_pretrained(tmp_path)
    with pytest.raises(
        ClipLabError, match="is a 'bert' model: the pretrained models clip_lab reads are of the families"
    ):
        pretrained.image_tower(f"hf:{tmp_path}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_bf16_embeds_as_the_cpu_does(family, models):
    images = torch.from_numpy(noise(4, 72)).permute(0, 3, 1, 2)
    _, cpu = pretrained.image_tower(models[family])(images)
    _, gpu = pretrained.image_tower(models[family]).cuda()(images.cuda())
    assert gpu.dtype == torch.float32 and (gpu.cpu() * cpu).sum(1).min() > 0.99
    texts = ["a red circle", "two blue squares"]
    on_cpu = pretrained.text_encoder(models[family]).encode(texts)
    on_gpu = pretrained.text_encoder(models[family]).cuda().encode(texts)
    assert on_gpu.device.type == "cuda" and (on_gpu.cpu() * on_cpu).sum(1).min() > 0.99


def test_a_processor_that_neither_resizes_nor_crops_is_refused():
    from types import SimpleNamespace

    from clip_lab.models.vision import Preprocess

    processor = SimpleNamespace(do_resize=False, do_center_crop=False, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    with pytest.raises(ClipLabError, match="m: its processor neither resizes nor crops"):
        Preprocess.of_processor(processor, "m")
