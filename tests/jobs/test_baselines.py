"""The reference baselines on the demo data: pretrained CLIP zero-shot checked against an independent evaluation,
head-only training over seeds, and both landing in the report next to the trained run."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from families import FAMILIES, NATIVE, Own, make_family

from clip_lab.__main__ import main
from clip_lab.data import image_cache
from clip_lab.data.coco import load_coco_split
from clip_lab.errors import ClipLabError
from clip_lab.eval.metrics import embedding_retrieval_metrics
from clip_lab.models.text import TextEncoder
from clip_lab.models.vision import HFImageTower


@pytest.fixture(scope="module")
def baselines(trained_run, tmp_path_factory):
    """results/b.json from the trained run's own config: same data, caches and test split."""
    results = tmp_path_factory.mktemp("baselines")
    assert (
        main(
            [
                "baselines",
                "-c",
                str(trained_run / "config.yaml"),
                "--run",
                "b",
                "--results_dir",
                str(results),
                "--seeds",
                "2",
                "--epochs",
                "3",
            ]
        )
        == 0
    )
    return results, json.loads((results / "b.json").read_text())


def test_zero_shot_row_equals_an_independent_evaluation(baselines, trained_run):
    _, result = baselines
    config = yaml.safe_load((trained_run / "config.yaml").read_text())["data"]
    split = load_coco_split(config["data_root"], "val2014")
    squares = image_cache.open_image_cache(config["cache_dir"], split, config["cache_image_size"])
    with torch.no_grad():
        _, image_emb = HFImageTower(config["text_model"])(torch.from_numpy(squares.copy()).permute(0, 3, 1, 2))
    caption_emb = TextEncoder(config["text_model"], config["max_length"]).encode(split.captions)
    # the caches store float16: round the same way so that ties and near-ties fall alike
    expected = embedding_retrieval_metrics(
        image_emb.half().float(), caption_emb.half().float(), torch.from_numpy(split.caption_image)
    )
    row = result["variants"]["pretrained (zero-shot)"]["metrics"]
    for key in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"):
        assert row[key]["mean"] == pytest.approx(expected[key], abs=1.5 / len(split.image_ids)), key
    assert row["rsum"]["std"] == 0.0  # evaluated once, deterministic
    assert result["protocol"]["name"] == "val2014" and result["protocol"]["gallery_images"] == len(split.image_ids)


def test_heads_train_per_seed_and_keep_their_best_epoch(baselines):
    results, result = baselines
    assert result["order"] == ["pretrained (zero-shot)", "linear head", "MLP head"]
    for head in ("linear head", "MLP head"):
        v = result["variants"][head]
        assert len(v["metrics"]["rsum"]["values"]) == 2 and len(v["history"]) == 2
        assert all(len(h) == 3 for h in v["history"])
        for history, best in zip(v["history"], v["best_epoch"]):
            assert max(h["val_rsum"] for h in history) == history[best]["val_rsum"]
        assert "diff" in v["vs_baseline"]["rsum"]
    assert result["feature_dim"] == 128 and result["embed_dim"] == 128  # the tiny CLIP's widths, discovered
    table = (results / "b.md").read_text()
    assert "| pretrained (zero-shot) |" in table and "| linear head |" in table and "| MLP head |" in table


def test_baselines_land_in_the_report_tables(baselines, trained_run, tmp_path):
    results, result = baselines
    shutil.copytree(trained_run, results / "t", dirs_exist_ok=True)
    report = tmp_path / "report" / "report.md"
    main(
        [
            "report",
            "--results_dir",
            str(results),
            "--run",
            "t",
            "--baselines",
            "b",
            "--out",
            str(report),
            "--no_figures",
        ]
    )
    text = report.read_text()
    assert "### 3.2 Reference baselines" in text and "| MLP head |" in text
    zero_shot = result["variants"]["pretrained (zero-shot)"]["metrics"]["i2t_R@1"]["mean"]
    assert "pretrained (zero-shot) clip_tiny, standard (%)" in text  # the reference column beside the trained model
    assert f" | {100 * zero_shot:.1f} |" in text
    latex = (tmp_path / "report" / "tables" / "baselines.tex").read_text()
    assert r"\begin{tabular}" in latex and "MLP head" in latex


def test_bad_settings_are_one_clear_line(tmp_path):
    from clip_lab.jobs.baselines import data_settings
    from clip_lab.jobs.baselines import main as baselines

    with pytest.raises(ClipLabError, match="config file .*nope.yaml does not exist"):
        baselines(["-c", str(tmp_path / "nope.yaml")])
    assert main(["baselines", "-c", str(tmp_path / "nope.yaml")]) == 2  # one `error:` line from the entry point

    with pytest.raises(ClipLabError, match="only data options"):
        data_settings([], ["--model.lr", "1"])
    assert data_settings([], ["--data.val_images", "5", "--data.val_split", "null"]) == {
        "val_images": 5,
        "val_split": None,
    }


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "clip"])  # CLIP's: the tests above
def test_each_familys_zero_shot_row_is_its_own_evaluation_and_a_head_trains_on_its_features(
    family, demo_root, tmp_path
):
    """The zero-shot row of a SigLIP, BLIP, ALIGN or OpenCLIP model equals the recall of embeddings written by the
    model's own API (its processor, tokenizer and feature functions); a linear head trains on its pooled features."""
    from clip_lab.files import CONFIGS

    name, side = make_family(family, tmp_path, demo_root), NATIVE[family]
    data = {
        "data_root": demo_root,
        "text_model": name,
        "cache_dir": tmp_path / "cache",
        "cache_image_size": side,  # the side its processor keeps: no resampling on either side
        "image_size": side,
        "num_workers": 0,
        "val_images": 64,
    }
    args = ["baselines", "-c", str(CONFIGS / "coco.yaml"), "-c", str(CONFIGS / "demo.yaml"), "--run", "b"]
    args += ["--results_dir", str(tmp_path / "results"), "--heads", "linear", "--seeds", "1", "--epochs", "2", "--"]
    assert main(args + [a for k, v in data.items() for a in (f"--data.{k}", str(v))]) == 0
    result = json.loads((tmp_path / "results" / "b.json").read_text())
    split = load_coco_split(demo_root, "val2014")
    own = Own(family, name)
    squares = image_cache.open_image_cache(tmp_path / "cache", split, side)
    expected = embedding_retrieval_metrics(
        own.image_features(np.array(squares)).half().float(),
        own.text_features(split.captions).half().float(),
        torch.from_numpy(split.caption_image),
    )
    row = result["variants"]["pretrained (zero-shot)"]["metrics"]
    for key in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"):
        assert row[key]["mean"] == pytest.approx(expected[key], abs=1.5 / len(split.image_ids)), key
    assert result["model"] == name and result["image_tower"]["input_size"] == (32 if family != "clip" else 64)
    assert result["image_tower"]["preprocessing"]["from"] == f"{side} px central squares"
    head = result["variants"]["linear head"]
    assert len(head["history"][0]) == 2 and result["embed_dim"] == own.text_features(["a"]).shape[1]
