"""The frozen text tower: normalized, order- and batch-independent embeddings; clear errors when weights are absent."""

import pytest
import torch

from clip_lab.errors import ClipLabError
from clip_lab.models.text import TextEncoder, load_pretrained, text_embed_dim, text_model_fingerprint

CAPTIONS = [
    "a red circle",
    "a small blue square on the left",
    "two shapes: a green cross and a black diamond",
    "a circle",
    "a large yellow triangle next to a small white square",
]


def test_encode_is_normalized_and_independent_of_batching(text_model):
    enc = TextEncoder(text_model, max_length=32)
    together = enc.encode(CAPTIONS, batch_size=64)
    one_by_one = torch.cat([enc.encode([c]) for c in CAPTIONS])
    assert together.shape == (5, enc.dim) == (5, text_embed_dim(text_model))
    assert torch.allclose(together.norm(dim=1), torch.ones(5), atol=1e-5)
    # sorting by length and padding must not change any caption's embedding
    assert torch.allclose(together, one_by_one, atol=1e-5)
    assert torch.allclose(enc.encode(CAPTIONS[::-1], batch_size=2), together.flip(0), atol=1e-5)
    # distinct captions give distinct embeddings (pooled at the end-of-text token, not the first token)
    sim = together @ together.T
    assert (sim - torch.eye(5)).max() < 0.999


def test_fast_tokenization_equals_the_hugging_face_call(text_model, tmp_path):
    from clip_lab.data.synthetic import coco_like_captions, make_clip_text_model

    long = " ".join(["a red circle and"] * 30)  # past every max_length: truncation must keep the end token
    bpe = tmp_path / "bpe"
    make_clip_text_model(bpe, coco_like_captions(500), small=True)
    for model, max_length in ((text_model, 32), (text_model, 8), (str(bpe), 77), (str(bpe), 10)):
        enc = TextEncoder(model, max_length=max_length)
        texts = CAPTIONS + [long, "", "UPPER case, punctuation!"] + coco_like_captions(50, seed=1)
        expected = enc.tokenizer(texts, truncation=True, max_length=enc.max_length)["input_ids"]
        assert enc._backend is not None and enc.tokenize(texts) == expected
        assert max(map(len, expected)) == enc.max_length
    assert enc.encode([]).shape == (0, enc.dim)


def test_encoder_is_frozen(text_model):
    enc = TextEncoder(text_model).train()
    assert not enc.model.training
    assert not any(p.requires_grad for p in enc.parameters())


def test_fingerprint_follows_the_weights(text_model, tmp_path):
    fp = text_model_fingerprint(text_model)
    assert fp == text_model_fingerprint(text_model) and fp.startswith("dir:")
    assert text_model_fingerprint("no-such-org/no-such-model") == "hub:no-such-org/no-such-model@unknown"


def test_unavailable_model_fails_fast_with_instructions(monkeypatch, tmp_path):
    from transformers import AutoConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(
        ClipLabError, match="not in the local Hugging Face cache.*hf download openai/clip-vit-base-patch32"
    ):
        load_pretrained(AutoConfig, "openai/clip-vit-base-patch32")
    (tmp_path / "broken").mkdir()
    with pytest.raises(ClipLabError, match="not a complete Hugging Face model directory"):
        TextEncoder(str(tmp_path / "broken"))


def test_unknown_words_are_the_words_the_tokenizer_reads_as_unk_only(text_model):
    enc = TextEncoder(text_model, max_length=32)  # the demo's word-level vocabulary: shapes, colours, a few others
    texts = ["a red sport", "Sport, music: a CIRCLE.", "a photo of a {}."]
    assert enc.unknown_words(texts) == ["sport", "Sport", "music"]  # as written; punctuation is not a word
    unk = enc.tokenizer.unk_token_id
    assert [enc.tokenizer(w, add_special_tokens=False)["input_ids"] for w in ("sport", "music")] == [[unk], [unk]]
    assert enc.unknown_words(["a large red circle next to a blue square"]) == []


def test_byte_level_bpe_knows_every_word():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from clip_lab.models.text import tokenizer_unknown_words

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        CAPTIONS,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    texts = ["sport", "a zebra über 東京", *CAPTIONS]
    # without an unknown token, and with one it never produces (OpenAI's CLIP names <|endoftext|> its unk_token)
    for tokenizer in (
        PreTrainedTokenizerFast(tokenizer_object=tok),
        PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<|endoftext|>"),
    ):
        assert tokenizer_unknown_words(tokenizer, texts) == []


def test_a_siglip_text_tower_embeds_as_siglip_does(tmp_path):
    """SigLIP's text features as its own API computes them: texts padded to the full length, no attention mask, the
    head on the last token; the width is the text tower's (not CLIP's projection_dim)."""
    from transformers import AutoTokenizer, SiglipModel

    from clip_lab.data.synthetic import make_siglip_model

    path = tmp_path / "siglip"
    make_siglip_model(path, width=48, max_length=16)
    enc = TextEncoder(str(path), max_length=77)
    assert enc.max_length == 16 and enc.dim == text_embed_dim(str(path)) == 48
    got = enc.encode(CAPTIONS, batch_size=2)
    model, tokenizer = SiglipModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    ids = tokenizer(CAPTIONS, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        features = model.get_text_features(input_ids=ids)
    features = getattr(features, "pooler_output", features)  # transformers 5 returns an output object
    assert torch.allclose(got, torch.nn.functional.normalize(features, dim=-1), atol=1e-5)
    # a shorter max_length truncates the texts but still pads them to the full 16, as SigLIP reads them
    short = TextEncoder(str(path), max_length=6)
    assert short.max_length == 6
    torch.testing.assert_close(short.encode(CAPTIONS[:1]), got[:1], atol=1e-5, rtol=0)  # "a red circle" fits in 6
    ids = tokenizer(CAPTIONS, padding="max_length", max_length=6, truncation=True).input_ids
    ids = torch.tensor([i + [tokenizer.pad_token_id] * 10 for i in ids])
    with torch.no_grad():
        truncated = model.get_text_features(input_ids=ids)
    truncated = torch.nn.functional.normalize(getattr(truncated, "pooler_output", truncated), dim=-1)
    torch.testing.assert_close(short.encode(CAPTIONS), truncated, atol=1e-5, rtol=0)


def test_an_align_text_tower_embeds_as_align_does(tmp_path):
    from transformers import AlignModel, AutoTokenizer

    from clip_lab.data.synthetic import make_align_model

    path = tmp_path / "align"
    make_align_model(path)
    enc = TextEncoder(str(path), max_length=77)
    assert enc.max_length == 32 and enc.dim == text_embed_dim(str(path)) == 32
    got = enc.encode(CAPTIONS, batch_size=2)
    model, tokenizer = AlignModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        features = model.get_text_features(**tokenizer(CAPTIONS, padding=True, return_tensors="pt"))
    features = getattr(features, "pooler_output", features)
    assert torch.allclose(got, torch.nn.functional.normalize(features, dim=-1), atol=1e-5)


def test_another_family_is_one_line_naming_those_there_are(tmp_path):
    from transformers import BertConfig

    BertConfig().save_pretrained(tmp_path)
    with pytest.raises(
        ClipLabError, match="is a .bert. model: the pretrained models clip_lab reads are of the families clip, siglip"
    ):
        text_embed_dim(str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["siglip", "blip", "align", "open_clip"])
def test_fit_search_and_zeroshot_against_a_frozen_text_tower_of_another_family(family, demo_root, tmp_path):
    import csv
    import json

    from cli_args import fit_args, job_args

    from clip_lab.__main__ import main
    from clip_lab.data import synthetic
    from clip_lab.jobs import search, zeroshot

    tower = tmp_path / family
    size = {"siglip": {"width": 48, "max_length": 16}, "blip": {"embed_dim": 48}}.get(family, {})
    getattr(synthetic, f"make_{family}_model")(tower, **size)
    tower = f"open_clip:local-dir:{tower}" if family == "open_clip" else tower
    args = fit_args(
        demo_root,
        tmp_path,
        "sig",
        data__text_model=tower,
        trainer__max_epochs=10,
        data__batch_size=32,
        data__val_images=64,
    )
    assert main(args) == 0
    run = tmp_path / "results" / "sig"
    rsum = [float(r["val/rsum"]) for r in csv.DictReader((run / "metrics.csv").open()) if r.get("val/rsum")]
    assert len(rsum) == 10 and max(rsum) > 2 * rsum[0]  # chance on 64 images is ~0.5
    assert list((tmp_path / "cache").glob(f"captions_train2014_*{family}*"))  # the cache, by this family's tower
    assert main(job_args("test", run, "best.ckpt")) == 0
    metrics = json.loads((run / "test_metrics.json").read_text())["metrics"]
    # a random tower of these families pools one position (SigLIP's a padding one), so its captions embed much
    # alike (SigLIP's cosines ~0.95): a harder target than the demo's CLIP, still learned well past chance
    assert metrics["rsum"] > 2 * (2 * (1 + 5 + 10) / 96)  # twice chance (measured: 0.8-1.0 after 10 epochs)
    # queries and prompts go through the same tower, 48 wide like the head
    ckpt = str(run / "checkpoints" / "best.ckpt")
    found = search.main(["--ckpt_path", ckpt, "--text", "a red circle", "--k", "3", "--out", str(tmp_path / "s.json")])
    assert len(found["results"]) == 3
    shapes = zeroshot.main(
        [
            "--ckpt_path",
            ckpt,
            "--images",
            "val2014",
            "--classes",
            "circle",
            "square",
            "triangle",
            "cross",
            "diamond",
            "--out",
            str(tmp_path / "z.json"),
        ]
    )
    assert shapes["accuracy"] is not None and shapes["n_images"] == 96


def test_a_blip_text_tower_embeds_as_blip_retrieval_does(tmp_path):
    """BLIP's contrastive text feature as BlipForImageTextRetrieval computes it (use_itm_head=False): the text
    encoder's [CLS] state through text_proj; the width is image_text_hidden_size."""
    from transformers import AutoTokenizer, BlipForImageTextRetrieval

    from clip_lab.data.synthetic import make_blip_model

    path = tmp_path / "blip"
    make_blip_model(path, embed_dim=40)
    enc = TextEncoder(str(path), max_length=77)
    assert enc.max_length == 32 and enc.dim == text_embed_dim(str(path)) == 40
    got = enc.encode(CAPTIONS, batch_size=2)
    model, tokenizer = BlipForImageTextRetrieval.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    inputs = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    pixels = torch.rand(1, 3, 32, 32)
    with torch.no_grad():  # the model's own cosine of one image with each text: our embeddings must give it
        own = model(**inputs, pixel_values=pixels, use_itm_head=False).itm_score[0]
        vision = model.vision_model(pixel_values=pixels).last_hidden_state
        image = torch.nn.functional.normalize(model.vision_proj(vision[:, 0]), dim=-1)[0]
    assert torch.allclose(got @ image, own, atol=1e-5)
    assert torch.allclose(got.norm(dim=1), torch.ones(5), atol=1e-5)


def test_a_missing_tokenizer_library_is_one_line(tmp_path):
    class NeedsSentencepiece:
        @classmethod
        def from_pretrained(cls, name, **kwargs):
            raise ImportError("SiglipTokenizer requires the SentencePiece library but it was not found.\nmore lines")

    with pytest.raises(ClipLabError, match=r"needs a library that is not installed: SiglipTokenizer requires the Sen"):
        load_pretrained(NeedsSentencepiece, f"hf:{tmp_path}")
