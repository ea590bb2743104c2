"""`python -m clip_lab search` on the trained demo checkpoint: top-k images for a text and top-k captions for an image,
scores recomputed by hand, the gallery cache reused and rebuilt when the checkpoint changes, one-line errors."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_args import ckpt_of
from PIL import Image

from clip_lab.__main__ import main
from clip_lab.data.augment import center_crop
from clip_lab.data.caption_cache import caption_cache_path
from clip_lab.data.coco import load_coco_split
from clip_lab.data.image_cache import decode_pil
from clip_lab.jobs import search
from clip_lab.models.text import TextEncoder
from clip_lab.train.module import ClipLab

# the reference is computed in float32 on the CPU; on a GPU the jobs embed in bf16, so scores differ slightly
ATOL = 5e-3 if torch.cuda.is_available() else 1e-4


@pytest.fixture(scope="module")
def direct(trained_run, demo_root):
    """Every val2014 image embedded by hand (decode, centre crop, model), in the split's order, and the model."""
    model = ClipLab.load_from_checkpoint(ckpt_of(trained_run), map_location="cpu", weights=None).eval()
    split = load_coco_split(demo_root, "val2014")
    squares = np.stack([decode_pil(split.image_path(i), 72) for i in range(len(split.image_ids))])
    with torch.no_grad():
        return split, model(center_crop(torch.from_numpy(squares), 64))


def test_text_query_returns_k_distinct_images_best_first(own_run, demo_root, text_model, direct, tmp_path):
    result = search.main(
        ["--ckpt_path", ckpt_of(own_run), "--text", "a red circle", "--k", "5", "--cache_dir", str(tmp_path / "cache")]
    )
    split, images = direct
    rows = result["results"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5] and len({r["image_id"] for r in rows}) == 5
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    # the same query through the text tower by hand, against every image of the split
    expected = images @ TextEncoder(text_model, 32).encode(["a red circle"])[0]
    position = {int(i): k for k, i in enumerate(split.image_ids)}
    assert torch.allclose(torch.tensor(scores), expected[[position[r["image_id"]] for r in rows]], atol=ATOL)
    assert scores[0] == pytest.approx(expected.max().item(), abs=ATOL)
    assert scores[-1] >= expected.topk(5).values[-1].item() - ATOL
    # the 6-epoch model knows colours: most of the five show something red
    assert (
        sum(
            "red"
            in " ".join(c for c, i in zip(split.captions, split.caption_image) if split.image_ids[i] == r["image_id"])
            for r in rows
        )
        >= 3
    )

    out = own_run / "search" / "text-a-red-circle_val2014.json"
    assert json.loads(out.read_text())["results"] == rows and result["split"] == "val2014"
    with Image.open(out.with_suffix(".png")) as figure:
        assert figure.format == "PNG"


def test_gallery_is_cached_reused_and_rebuilt_for_another_checkpoint(trained_run, tmp_path, caplog):
    args = [
        "--ckpt_path",
        ckpt_of(trained_run),
        "--text",
        "a blue square",
        "--cache_dir",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "out.json"),
    ]
    first = search.main(args)
    gallery = Path(first["gallery"]["cache"])
    assert gallery.parent == tmp_path / "cache" and gallery.is_file() and gallery.name.startswith("gallery_val2014_")
    assert "_72_crop64_" in gallery.name  # after the data's fingerprint: the cache's side, the crop
    stamp = gallery.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="clip_lab"):
        second = search.main(args)
    assert gallery.stat().st_mtime_ns == stamp and "reused" in caplog.text
    assert second["results"] == first["results"]

    # another checkpoint (other weights): another fingerprint, so its own gallery; the first one stays as it was
    changed = torch.load(ckpt_of(trained_run), map_location="cpu", weights_only=True)
    last_head_bias = [k for k in changed["state_dict"] if k.startswith("head.") and k.endswith("bias")][-1]
    changed["state_dict"][last_head_bias] += 0.5
    other = tmp_path / "other" / "checkpoints" / "best.ckpt"
    other.parent.mkdir(parents=True)
    torch.save(changed, other)
    third = search.main([*args[:1], str(other), *args[2:]])
    assert third["gallery"]["cache"] != first["gallery"]["cache"] and gallery.stat().st_mtime_ns == stamp
    assert [r["score"] for r in third["results"]] != [r["score"] for r in first["results"]]

    # a gallery whose metadata disagrees (here: written for another checkpoint) is rebuilt, not trusted
    cache = torch.load(gallery, weights_only=True)
    cache["meta"]["checkpoint_sha256"] = "0" * 64
    torch.save(cache, gallery)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clip_lab"):
        fourth = search.main(args)
    assert "stale (checkpoint_sha256 changed)" in caplog.text and fourth["results"] == first["results"]
    assert torch.load(gallery, weights_only=True)["meta"]["checkpoint_sha256"] != "0" * 64


def test_unknown_query_words_are_named_in_one_warning(trained_run, tmp_path, caplog):
    common = ["--ckpt_path", ckpt_of(trained_run), "--k", "3", "--out", str(tmp_path / "out.json")]
    with caplog.at_level(logging.WARNING, logger="clip_lab"):
        result = search.main([*common, "--text", "a red sport"])  # the demo knows "red", not "sport"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("query 'a red sport': 'sport' not in"), warnings
    assert "'red'" not in warnings[0] and "rests on the other words" in warnings[0]
    assert result["query"] == {"text": "a red sport", "unknown_words": ["sport"]}

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clip_lab"):
        assert search.main([*common, "--text", "sport music"])["query"]["unknown_words"] == ["sport", "music"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "'sport', 'music' not in" in warning and "says nothing about the query" in warning

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clip_lab"):
        assert search.main([*common, "--text", "a red circle"])["query"]["unknown_words"] == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_image_query_returns_top_captions_from_the_caption_cache(trained_run, own_run, demo_root, direct):
    split, images = direct
    captions = caption_cache_path(trained_run.parent.parent / "cache", split, str(demo_root / "clip_tiny"), 32)
    stamp = captions.stat().st_mtime_ns
    query = demo_root / "val2014" / split.file_names[3]
    result = search.main(["--ckpt_path", ckpt_of(own_run), "--image", str(query), "--k", "7"])
    rows = result["results"]
    assert len(rows) == 7 and len({r["caption_id"] for r in rows}) == 7
    assert result["gallery"] == {"kind": "captions", "n": 480, "cache": str(captions)}
    assert captions.stat().st_mtime_ns == stamp  # fit's caption cache, reused as it is
    embeddings = torch.load(captions, weights_only=True)["embeddings"].float()
    expected = embeddings @ images[3]
    assert torch.allclose(torch.tensor([r["score"] for r in rows]), expected.topk(7).values, atol=ATOL)
    by_id = dict(zip(split.caption_ids.tolist(), split.captions))
    assert all(by_id[r["caption_id"]] == r["caption"] for r in rows)
    assert all(r["image_id"] in split.image_ids for r in rows)
    assert (own_run / "search" / "image-coco-val2014-000001000004_val2014.png").is_file()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--text": None}, "give one query"),
        ({"--image": "QUERY"}, "give one query"),
        ({"--text": "   "}, "empty query"),
        ({"--text": None, "--image": "nowhere.jpg"}, "query image nowhere.jpg does not exist"),
        ({"--text": None, "--image": "BAD"}, "cannot read image"),
        ({"--ckpt_path": "BAD"}, "cannot load"),
        ({"--split": "test2015"}, "unknown split 'test2015' for dataset 'coco'"),
        ({"--k": "0"}, "--k must be at least 1"),
    ],
)
def test_bad_input_is_one_clear_line(trained_run, demo_root, tmp_path, capsys, change, message):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    stand_in = {"BAD": str(tmp_path / "bad.jpg"), "QUERY": str(demo_root / "val2014" / "COCO_val2014_000001000001.jpg")}
    args = {"--ckpt_path": ckpt_of(trained_run), "--text": "a red circle"}
    args |= {k: stand_in.get(v, v) for k, v in change.items()}
    capsys.readouterr()
    assert main(["search", *[x for k, v in args.items() if v is not None for x in (k, v)]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_images_the_cache_skipped_never_come_back_from_search_or_zeroshot(trained_run, demo_root, tmp_path):
    import shutil

    from clip_lab.jobs import zeroshot

    root = tmp_path / "coco"
    shutil.copytree(demo_root, root)
    split = load_coco_split(root, "val2014")
    split.image_path(0).write_bytes(b"")  # unreadable: skipped by the image cache
    common = [
        "--ckpt_path",
        ckpt_of(trained_run),
        "--data_root",
        str(root),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--max_bad_images",
        "0.05",
    ]
    result = search.main([*common, "--text", "a red circle", "--k", "95", "--out", str(tmp_path / "s.json")])
    ids = {r["image_id"] for r in result["results"]}
    assert len(ids) == 95 and int(split.image_ids[0]) not in ids
    out = zeroshot.main(
        [
            *common,
            "--images",
            "val2014",
            "--classes",
            "circle",
            "square",
            "triangle",
            "diamond",
            "cross",
            "--out",
            str(tmp_path / "z.json"),
        ]
    )
    assert out["source"]["skipped_unreadable"] == 1 and len(out["predictions"]) == 95


def test_k_beyond_the_gallery_warns_returns_the_gallery_and_keeps_the_figure_small(
    trained_run, demo_root, tmp_path, caplog
):
    common = ["--ckpt_path", ckpt_of(trained_run), "--k", "500"]
    with caplog.at_level(logging.WARNING, logger="clip_lab"):
        result = search.main([*common, "--text", "a red circle", "--out", str(tmp_path / "t.json")])
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning == "--k 500 is more than the 96 images of val2014 the gallery holds: returning all 96"
    assert result["k"] == len(result["results"]) == 96 and len({r["image_id"] for r in result["results"]}) == 96
    with Image.open(tmp_path / "t.png") as figure:  # the first 25 drawn, 5 rows of 5 at 100 dpi: not 20 rows
        assert figure.size == (1200, 1350)

    caplog.clear()
    query = demo_root / "val2014" / "COCO_val2014_000001000001.jpg"
    with caplog.at_level(logging.WARNING, logger="clip_lab"):
        result = search.main([*common, "--image", str(query), "--k", "1000", "--out", str(tmp_path / "i.json")])
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning == "--k 1000 is more than the 480 captions of val2014 the gallery holds: returning all 480"
    assert result["k"] == len(result["results"]) == 480
    with Image.open(tmp_path / "i.png") as figure:  # 25 caption lines, not 480
        assert figure.size[1] < 600


def test_a_second_search_into_the_same_output_is_written_beside_it_not_over_it(own_run, tmp_path):
    first = search.main(["--ckpt_path", ckpt_of(own_run), "--text", "a red circle", "--k", "3"])
    folder = own_run / "search"
    assert first["json"] == str(folder / "text-a-red-circle_val2014.json")
    stamp = (folder / "text-a-red-circle_val2014.json").stat().st_mtime_ns
    second = search.main(["--ckpt_path", ckpt_of(own_run), "--text", "a red circle", "--k", "4"])
    assert second["json"] == str(folder / "text-a-red-circle_val2014-2.json")
    assert second["figure"] == str(folder / "text-a-red-circle_val2014-2.png")
    assert (folder / "text-a-red-circle_val2014.json").stat().st_mtime_ns == stamp  # the first one as it was
    assert len(json.loads((folder / "text-a-red-circle_val2014-2.json").read_text())["results"]) == 4
    # an --out that exists is kept too; a free name is taken as given
    out = tmp_path / "mine.json"
    assert search.main(["--ckpt_path", ckpt_of(own_run), "--text", "a square", "--out", str(out)])["json"] == str(out)
    again = search.main(["--ckpt_path", ckpt_of(own_run), "--text", "a square", "--out", str(out)])
    assert again["json"] == str(tmp_path / "mine-2.json") and (tmp_path / "mine-2.png").is_file()
    assert sorted(p.name for p in folder.iterdir()) == [
        "text-a-red-circle_val2014-2.json",
        "text-a-red-circle_val2014-2.png",
        "text-a-red-circle_val2014.json",
        "text-a-red-circle_val2014.png",
    ]


def test_the_old_ckpt_spelling_still_works_with_one_warning(trained_run, tmp_path, monkeypatch, caplog):
    from clip_lab import options

    monkeypatch.setattr(options, "_warned", set())  # as in a fresh process
    args = ["--ckpt", ckpt_of(trained_run), "--text", "a red circle", "--k", "2", "--out", str(tmp_path / "s.json")]
    with caplog.at_level(logging.WARNING, logger="clip_lab"):
        old = search.main(args)
        again = search.main(args)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["--ckpt is deprecated: use --ckpt_path (the old spelling goes in the next release)"]
    assert old["checkpoint"] == again["checkpoint"] == ckpt_of(trained_run)
    assert [r["image_id"] for r in old["results"]] == [r["image_id"] for r in again["results"]]
