"""`python -m clip_lab zeroshot` on the trained demo checkpoint: probabilities recomputed by hand, accuracy and chance
against the generator's ground truth, a class-folder set well above chance, one-line errors."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clip_lab import zeroshot
from clip_lab.__main__ import main
from clip_lab.augment import center_crop
from clip_lab.data.image_cache import decode_pil
from clip_lab.data.synthetic import COLORS, SHAPES
from clip_lab.module import ClipLab
from clip_lab.text import TextEncoder

# the reference is computed in float32 on the CPU; on a GPU the jobs embed in bf16, so probabilities (scale ~15 x cosine) differ slightly
ATOL = 2e-2 if torch.cuda.is_available() else 1e-4


def ckpt_of(run):
    return str(run / "checkpoints" / "best.ckpt")


def test_split_probabilities_accuracy_and_chance_are_what_they_say(trained_run, demo_root, text_model, capsys):
    result = zeroshot.main(["--ckpt", ckpt_of(trained_run), "--images", "val2014", "--classes", *SHAPES])
    preds = result["predictions"]
    assert result["n_images"] == len(preds) == 96 and result["source"]["kind"] == "split"

    # ground truth and chance straight from the generator's json: an image is right when it shows the predicted shape
    images = json.loads((demo_root / "annotations" / "captions_val2014.json").read_text())["images"]
    truth = [im["demo_shapes"] for im in sorted(images, key=lambda im: im["id"])]
    assert [p["truth"] for p in preds] == truth
    assert result["chance"] == pytest.approx(sum(len(set(t)) for t in truth) / 5 / 96)
    assert 0.25 < result["chance"] < 0.35  # one or two shapes out of five
    assert result["accuracy"] == pytest.approx(sum(p["predicted"] in t for p, t in zip(preds, truth)) / 96)

    # the probabilities recomputed by hand: decode + centre crop, prompt ensembling, softmax of exp(scale) * cosine
    model = ClipLab.load_from_checkpoint(ckpt_of(trained_run), map_location="cpu", weights=None).eval()
    templates = zeroshot.load_templates(zeroshot.TEMPLATES)
    encoder = TextEncoder(text_model, 32)
    classes = torch.stack([F.normalize(encoder.encode([t.replace("{}", c) for t in templates]).mean(0), dim=0)
                           for c in SHAPES])
    files = [demo_root / "val2014" / p["image"] for p in preds[:8]]
    with torch.no_grad():  # the demo config's image sizes: 72 px stored, 64 px seen
        image = model(center_crop(torch.from_numpy(np.stack([decode_pil(f, 72) for f in files])), 64))
    expected = (model.logit_scale.exp() * image @ classes.T).softmax(dim=1)
    got = torch.tensor([[p["probs"][c] for c in SHAPES] for p in preds[:8]])
    assert torch.allclose(got, expected, atol=ATOL)
    for p in preds:
        assert sum(p["probs"].values()) == pytest.approx(1, abs=1e-4)
        assert p["predicted"] == max(p["probs"], key=p["probs"].get) and p["probability"] == p["probs"][p["predicted"]]

    out = trained_run / "zeroshot" / "val2014.json"
    assert json.loads(out.read_text())["accuracy"] == result["accuracy"]
    with Image.open(out.with_suffix(".png")) as figure:
        assert figure.format == "PNG" and min(figure.size) > 200
    printed = capsys.readouterr().out
    assert f"accuracy {result['accuracy']:.3f}   chance {result['chance']:.3f}" in printed
    assert "... 76 more in" in printed  # 20 rows printed, all 96 saved


def test_class_folders_give_accuracy_well_above_chance(trained_run, demo_root, tmp_path):
    """Single-shape validation images sorted into one folder per colour (named in their captions): the 6-epoch model
    has learned colour (measured: 0.52 on these 42 images) but not yet shape, which the 2,000-image demo learns."""
    ann = json.loads((demo_root / "annotations" / "captions_val2014.json").read_text())
    first_caption = {}
    for a in sorted(ann["annotations"], key=lambda a: a["id"]):
        first_caption.setdefault(a["image_id"], a["caption"])
    folder = tmp_path / "colours"
    for im in ann["images"]:
        if len(im["demo_shapes"]) == 1:
            (colour,) = [w for w in first_caption[im["id"]].split() if w in COLORS]
            (folder / colour).mkdir(parents=True, exist_ok=True)
            shutil.copy(demo_root / "val2014" / im["file_name"], folder / colour)
    (folder / "notes.txt").write_text("not an image: skipped")
    (folder / "red").mkdir(exist_ok=True)
    result = zeroshot.main(["--ckpt", ckpt_of(trained_run), "--images", str(folder), "--classes", *COLORS,
                            "--out", str(tmp_path / "out" / "colours.json")])
    n = sum(1 for _ in folder.rglob("*.jpg"))
    assert result["source"]["kind"] == "folder" and result["n_images"] == n > 30
    assert result["chance"] == pytest.approx(1 / len(COLORS))
    assert result["accuracy"] >= 0.3  # 2.4 x chance
    assert all(p["truth"] == [p["image"].split("/")[0]] for p in result["predictions"])
    assert (tmp_path / "out" / "colours.png").is_file()


def test_one_image_file_with_own_templates(trained_run, demo_root, tmp_path):
    templates = tmp_path / "prompts.yaml"
    templates.write_text("templates:\n  - a {}\n  - a picture of a {}\n")
    image = demo_root / "val2014" / "COCO_val2014_000001000003.jpg"
    result = zeroshot.main(["--ckpt", ckpt_of(trained_run), "--images", str(image), "--classes", "circle", "square",
                            "--templates", str(templates)])
    assert result["n_images"] == 1 and result["source"]["kind"] == "file" and result["accuracy"] is None
    assert result["templates"] == ["a {}", "a picture of a {}"]
    assert set(result["predictions"][0]["probs"]) == {"circle", "square"}
    assert (trained_run / "zeroshot" / "coco-val2014-000001000003.png").is_file()


@pytest.mark.parametrize("change, message", [
    ({"--ckpt": "nowhere.ckpt"}, "checkpoint nowhere.ckpt does not exist"),
    ({"--classes": []}, "at least two non-empty class names"),
    ({"--classes": ["circle", "circle"]}, "class names repeat"),
    ({"--images": "nowhere.jpg"}, "--images nowhere.jpg: no such file or folder"),
    ({"--images": "BAD"}, "cannot read image"),
    ({"--images": "EMPTY"}, "holds no images"),
    ({"--templates": "nowhere.yaml"}, "cannot read prompt templates from nowhere.yaml"),
    ({"--templates": "NO_SLOT"}, "one {} each"),
])
def test_bad_input_is_one_clear_line(trained_run, tmp_path, capsys, change, message):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_slot.yaml").write_text("templates:\n  - a photo\n")
    stand_in = {"BAD": str(tmp_path / "bad.jpg"), "EMPTY": str(tmp_path / "empty"),
                "NO_SLOT": str(tmp_path / "no_slot.yaml")}
    args = {"--ckpt": [ckpt_of(trained_run)], "--images": ["val2014"], "--classes": ["circle", "square"]}
    args |= {k: v if isinstance(v, list) else [stand_in.get(v, v)] for k, v in change.items()}
    capsys.readouterr()
    assert main(["zeroshot", *[x for k, v in args.items() for x in (k, *v)]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
