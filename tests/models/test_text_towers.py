"""Trained text encoders (LSTM, a transformer standing in for DistilBERT): tokenization with known answers, padding
that changes nothing, gradients and learning rates where they belong, and fits through the CLI that learn, without
any CLIP model, and whose checkpoints carry everything a query needs."""

import csv
import json
import logging

import pytest
import torch
from cli_args import fit_args, job_args

from clip_lab.__main__ import main
from clip_lab.data.augment import center_crop
from clip_lab.data.coco import load_coco_split
from clip_lab.data.image_cache import decode_pil
from clip_lab.jobs import search
from clip_lab.models.text_towers import LSTMTextTower, TransformerTextTower, masked_mean
from clip_lab.train.module import ClipLab

CAPTIONS = ["a red circle", "A red square.", "two shapes: a red circle and a blue square", "the blue cross"]


@pytest.fixture(scope="module")
def bert(demo_root):
    return str(demo_root / "bert_tiny")


def lstm(**kw) -> LSTMTextTower:
    torch.manual_seed(0)
    tower = LSTMTextTower(**{"vocab_size": 8, "width": 16, "dim": 8, "max_length": 6} | kw)
    tower.fit_vocabulary(CAPTIONS)
    return tower


def test_lstm_vocabulary_is_the_most_frequent_words_and_tokens_are_padded_with_zero(caplog):
    tower = lstm()
    # counts: a 3, red 3, blue 2, circle 2, square 2, then and/cross/shapes/the/two 1 each;
    # 8 rows - 2 reserved = 6 words
    assert tower.vocabulary == ["a", "red", "blue", "circle", "square", "and"]
    with caplog.at_level(logging.WARNING, logger="clip_lab"):
        tokens = tower.tokenize(["A red circle!", "the purple square", "", "a a a a a a a"])
    assert tokens.dtype == torch.int32 and tokens.tolist() == [
        [2, 3, 5, 0, 0, 0],  # punctuation and case dropped
        [1, 1, 6, 0, 0, 0],  # unknown words read as <unk> = 1
        [0, 0, 0, 0, 0, 0],  # an empty caption is all padding
        [2, 2, 2, 2, 2, 2],  # cut at max_length ...
    ]
    assert "1 of 4 texts are longer than 6 tokens" in caplog.text  # ... and said so


def test_lstm_reports_the_words_outside_its_vocabulary():
    tower = lstm()  # vocabulary: a red blue circle square and
    texts = ["A red circle!", "the purple square", "Purple sky and the two"]
    assert tower.unknown_words(texts) == ["the", "purple", "sky", "two"]
    assert tower.tokenize(["the purple sky two"]).tolist() == [[1, 1, 1, 1, 0, 0]]  # each reads as <unk> = 1
    assert tower.unknown_words(["a blue square and a red circle"]) == []


def test_transformer_tower_reports_the_words_its_wordpiece_vocabulary_lacks(bert):
    tower = TransformerTextTower(bert, dim=8, max_length=12)  # the demo's words, in a WordPiece vocabulary
    assert tower.unknown_words(["a red sport", "redsquare: a Circle"]) == ["sport", "redsquare"]
    assert tower.unknown_words(["two shapes: a red circle and a blue square"]) == []


def test_lstm_reads_each_caption_forwards_and_backwards_whatever_the_padding():
    tower = lstm().eval()
    tokens = tower.tokenize(["a red circle", "two shapes and a blue square"])
    got = tower.features(tokens)
    for i, n in enumerate((3, 6)):  # by hand: each direction over the caption's own words, unpadded
        x = tower.body["embedding"](tokens[i, :n].long())[None]
        ahead, _ = tower.body["ahead"](x)
        behind, _ = tower.body["behind"](x.flip(1))
        expected = torch.cat([ahead, behind.flip(1)], dim=-1)[0].mean(0)
        assert torch.allclose(got[i], expected, atol=1e-6)
    alone = tower.encode(["a red circle"])
    assert torch.allclose(alone[0], tower.encode(["a red circle", "a blue square and a red circle"])[0], atol=1e-6)
    assert torch.allclose(alone.norm(dim=1), torch.ones(1))


def test_transformer_tower_pools_the_unpadded_states_of_its_model(bert):
    tower = TransformerTextTower(bert, dim=8, max_length=12).eval()
    tokens = tower.tokenize(["a red circle", "two shapes: a red circle and a blue square"])
    assert tokens.shape == (2, 12) and tokens.dtype == torch.int32
    ids = tower.tokenizer(["a red circle"])["input_ids"][0]  # [CLS] a red circle [SEP]
    assert tokens[0].tolist() == [i + 1 for i in ids] + [0] * (12 - len(ids))  # shifted by one, 0 = padding
    with torch.no_grad():
        states = tower.body(input_ids=torch.tensor([ids])).last_hidden_state[0]
        assert torch.allclose(tower.features(tokens)[0], states.mean(0), atol=1e-5)
    assert torch.equal(masked_mean(torch.ones(1, 3, 2), torch.zeros(1, 3, dtype=torch.bool)), torch.zeros(1, 2))


@pytest.mark.parametrize("kind", ["lstm", "bert"])
def test_gradients_and_learning_rates_reach_exactly_the_trainable_parameters(kind, bert):
    torch.manual_seed(0)
    model = ClipLab(
        backbone="resnet18",
        weights=None,
        embed_dim=8,
        head_hidden=16,
        text_width=16,
        vocab_size=16,
        text_encoder="lstm" if kind == "lstm" else bert,
        lr=1e-3,
        backbone_lr=1e-4,
        text_lr=3e-5,
    )
    if kind == "lstm":
        model.text_tower.fit_vocabulary(CAPTIONS)
    tokens = model.text_tower.tokenize(CAPTIONS)
    loss, _ = model.train_loss(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), tokens)
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0} >= trainable - {
        n for n in trainable if "embedding" in n
    }  # embedding rows of words absent from the batch get no gradient
    assert all(model.get_parameter(n).grad is not None for n in trainable)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in model.build_optimizer().param_groups for p in g["params"]}
    assert len(lr_of) == len(trainable)
    for name, p in model.named_parameters():
        lr, decay = lr_of[id(p)]
        expected = 3e-5 if name.startswith("text_tower.body.") else 1e-4 if name.startswith("image_encoder.") else 1e-3
        assert lr == expected, name
        if "embedding" in name or p.ndim < 2:
            assert decay == 0.0, name
    # a row of zeros (an image without captions in an evaluation batch) stays a zero embedding
    assert torch.equal(model.embed_text(torch.zeros(2, 32, dtype=torch.int32)), torch.zeros(2, 8))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lstm", "bert"])
def test_fit_with_a_trained_text_encoder_learns_without_any_clip_model(kind, bert, demo_root, tmp_path):
    overlay, text = (
        ("text/lstm.yaml", {})
        if kind == "lstm"
        else ("text/distilbert.yaml", {"model.text_encoder": bert, "model.text_lr": "1e-3"})
    )
    args = fit_args(
        demo_root,
        tmp_path,
        kind,
        overlay,
        **text,
        data__text_model=tmp_path / "no_clip_here",
        trainer__max_epochs=6,
        data__batch_size=32,
        data__val_images=64,
    )
    assert main(args) == 0
    run = tmp_path / "results" / kind
    rsum = [float(r["val/rsum"]) for r in csv.DictReader((run / "metrics.csv").open()) if r.get("val/rsum")]
    assert len(rsum) == 6 and rsum[-1] > 2 * rsum[0]  # chance on 64 images is ~0.5
    assert not list((tmp_path / "cache").glob("captions_*"))  # nothing embedded by a frozen tower
    ckpt = run / "checkpoints" / "best.ckpt"
    assert main(job_args("test", run, "best.ckpt")) == 0
    metrics = json.loads((run / "test_metrics.json").read_text())["metrics"]
    assert metrics["rsum"] > 1.5 and metrics["n_captions"] == 5 * metrics["n_images"] == 480  # chance: ~0.33

    # the checkpoint alone rebuilds the text encoder (an LSTM's vocabulary travels with it) for queries
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = ClipLab.load_from_checkpoint(ckpt, map_location="cpu", weights=None, text_pretrained=False).eval()
    if kind == "lstm":
        assert model.text_tower.vocabulary == stored["clip_lab_vocabulary"] and "red" in model.text_tower.vocabulary
    state = {k[len("text_tower.") :]: v for k, v in stored["state_dict"].items() if k.startswith("text_tower.")}
    assert all(torch.equal(v, model.text_tower.state_dict()[k]) for k, v in state.items())
    # search: the caption gallery and the query go through the checkpoint's own text encoder
    split = load_coco_split(demo_root, "val2014")

    @torch.no_grad()
    def embed_image(i):  # decoded and cropped as evaluation does it
        return model(center_crop(torch.from_numpy(decode_pil(split.image_path(i), 72).copy())[None], 64))[0]

    found = search.main(["--ckpt_path", str(ckpt), "--image", str(split.image_path(0)), "--k", "3", "--device", "cpu"])
    assert f"captions_val2014_{split.fingerprint}_ckpt" in found["gallery"]["cache"]
    expected = (model.text_tower.encode(split.captions).half().float() @ embed_image(0)).topk(3).values
    assert torch.allclose(torch.tensor([r["score"] for r in found["results"]]), expected, atol=1e-3)
    top = search.main(["--ckpt_path", str(ckpt), "--text", split.captions[0], "--k", "1", "--device", "cpu"])[
        "results"
    ][0]
    image = split.image_ids.tolist().index(top["image_id"])
    # the gallery comes from the image cache, which a GPU machine decodes with nvJPEG (PIL here): a little apart
    assert top["score"] == pytest.approx(
        float(embed_image(image) @ model.text_tower.encode([split.captions[0]])[0]),
        abs=5e-3 if torch.cuda.is_available() else 1e-4,
    )
    # a checkpoint of another text encoder is refused in one line, not loaded into the wrong model
    assert main(["test", "-c", str(run / "config.yaml"), "--ckpt_path", str(ckpt), "--model.text_encoder", "null"]) == 2
