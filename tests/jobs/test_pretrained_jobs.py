"""search, zeroshot, embed and serve over a pretrained model named as its ecosystem names it (`hf:...`,
`open_clip:...`), as over a trained checkpoint: the same galleries as the baselines' zero-shot row, the model's own
scoring, and a pretrained and a trained model side by side on one server."""

import json

import pytest
import torch
from cli_args import ckpt_of
from families import Own, make_family

from clip_lab.__main__ import main
from clip_lab.data.coco import load_coco_split
from clip_lab.data.feature_cache import ensure_feature_cache
from clip_lab.errors import ClipLabError
from clip_lab.files import CONFIGS
from clip_lab.jobs import embed, search, serve, zeroshot

CONFIG = ["-c", str(CONFIGS / "coco.yaml"), "-c", str(CONFIGS / "demo.yaml")]


def data_flags(demo_root, tmp_path):
    return ["--data_root", str(demo_root), "--cache_dir", str(tmp_path / "cache")]


def test_search_over_a_pretrained_model_ranks_its_own_embeddings(demo_root, tmp_path):
    name = f"hf:{demo_root / 'clip_tiny'}"
    out = tmp_path / "s.json"
    args = ["--ckpt_path", name, *CONFIG, *data_flags(demo_root, tmp_path), "--text", "a red circle", "--k", "5"]
    found = search.main(args + ["--out", str(out)])
    split = load_coco_split(demo_root, "val2014")
    # the gallery is the feature cache's image embeddings (the baselines' zero-shot row), the query CLIP's own text
    cache = ensure_feature_cache(split, tmp_path / "cache", 72, name)
    query = Own("clip", name).text_features(["a red circle"])[0]
    scores = cache["embeds"].float() @ query
    best = scores.argsort(descending=True)[:5]
    assert [r["image_id"] for r in found["results"]] == [int(split.image_ids[i]) for i in best]
    assert [r["score"] for r in found["results"]] == pytest.approx(scores[best].tolist(), abs=1e-3)
    assert json.loads(out.read_text())["checkpoint"] == name


def test_zeroshot_of_a_siglip_model_gives_its_sigmoid_probabilities(demo_root, tmp_path):
    name = make_family("siglip", tmp_path, demo_root)
    out = tmp_path / "z.json"
    args = ["--ckpt_path", name, *CONFIG, *data_flags(demo_root, tmp_path), "--cache_image_size", "32"]
    result = zeroshot.main(args + ["--images", "val2014", "--classes", "circle", "square", "--out", str(out)])
    assert result["n_images"] == 96 and result["logit_bias"] == pytest.approx(0.0)  # a random SigLIP's: scale 1
    p = result["predictions"][0]["probs"]
    # sigmoids, one per class: they need not sum to 1 (two classes of a random model: each near 0.5)
    assert abs(sum(p.values()) - 1) > 1e-3 and all(0.4 < v < 0.8 for v in p.values())


def test_embed_and_a_trained_checkpoint_refuse_what_is_not_theirs(demo_root, trained_run, tmp_path):
    name = make_family("open_clip", tmp_path, demo_root)
    (tmp_path / "q.txt").write_text("a red circle\n")
    args = ["--ckpt_path", name, *data_flags(demo_root, tmp_path), "--texts", str(tmp_path / "q.txt")]
    result = embed.main(args + ["--out", str(tmp_path / "e.pt")])
    got = torch.load(tmp_path / "e.pt", weights_only=True)["text_embeddings"]
    torch.testing.assert_close(got, Own("open_clip", name).text_features(["a red circle"]), atol=1e-5, rtol=0)
    assert result["checkpoint"] == name
    with pytest.raises(ClipLabError, match="carries its own data settings: --config is for a pretrained model"):
        search.main(["--ckpt_path", ckpt_of(trained_run), *CONFIG, "--text", "a red circle"])
    with pytest.raises(ClipLabError, match="embeds texts with its own text tower"):
        search.main(["--ckpt_path", name, "--text_model", "other", "--text", "a"])
    assert main(["search", "--ckpt_path", "hf:/no/such/model", "--text", "a"]) == 2  # one `error:` line


def test_a_pretrained_and_a_trained_model_side_by_side(demo_root, trained_run, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from clip_lab.eval.index import IndexSpec

    siglip = make_family("siglip", tmp_path, demo_root)
    paths = [ckpt_of(trained_run), siglip]
    flags = {"data_root": str(demo_root), "cache_dir": str(tmp_path / "cache")}
    retrievers = serve.load_retrievers(paths, "val2014", IndexSpec(), "cpu", [str(CONFIGS / "demo.yaml")], **flags)
    client = TestClient(serve.build_app(retrievers))
    models = client.get("/api/models").json()
    assert [m["name"] for m in models] == ["t", "siglip"]
    assert models[1]["checkpoint"] == siglip and models[1]["logit_bias"] is not None and models[0]["logit_bias"] is None
    assert models[1]["embed_dim"] == 64 and models[1]["images"] == models[0]["images"] == 96
    for m in ("t", "siglip"):  # the same query against each: each ranks its own gallery
        found = client.get(f"/api/models/{m}/images", params={"text": "a red circle", "k": 3}).json()
        assert len(found["results"]) == 3
        expected = retrievers[m].search_text("a red circle", 3)
        assert [r["image_id"] for r in found["results"]] == [e.image_id for e in expected]
