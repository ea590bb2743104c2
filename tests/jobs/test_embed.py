"""`python -m clip_lab embed`: a checkpoint's embeddings of a split, a folder of images and a file of texts, each
equal to the model's own computation by hand, in one .pt file that loads without pickles; bad input in one line."""

import numpy as np
import pytest
import torch

from clip_lab.__main__ import main
from clip_lab.data.augment import center_crop
from clip_lab.data.coco import load_coco_split
from clip_lab.data.image_cache import decode_pil
from clip_lab.jobs import embed
from clip_lab.models.text import TextEncoder
from clip_lab.train.module import ClipLab

# on a GPU the job embeds in bf16 (texts in fp16) from an nvJPEG-decoded cache; the references here are float32 CPU
GPU = torch.cuda.is_available()
ATOL, TEXT_ATOL = (2e-2, 2e-3) if GPU else (1e-4, 1e-5)


@pytest.fixture(scope="module")
def model(trained_run):
    return ClipLab.load_from_checkpoint(
        trained_run / "checkpoints" / "best.ckpt", map_location="cpu", weights=None
    ).eval()


def by_hand(model, files):
    with torch.no_grad():  # the demo config's sizes: 72 px stored, 64 px seen
        return model(center_crop(torch.from_numpy(np.stack([decode_pil(f, 72) for f in files])), 64))


def test_a_split_gives_every_image_and_caption_with_their_links(trained_run, demo_root, text_model, model, tmp_path):
    out = tmp_path / "val.pt"
    assert (
        main(
            [
                "embed",
                "--ckpt_path",
                str(trained_run / "checkpoints" / "best.ckpt"),
                "--split",
                "val2014",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    stored = torch.load(out, weights_only=True)
    split = load_coco_split(demo_root, "val2014")
    assert stored["image_embeddings"].shape == (96, 128) and stored["caption_embeddings"].shape == (480, 128)
    assert stored["image_ids"].tolist() == split.image_ids.tolist() and stored["captions"] == split.captions
    files = [split.image_path(i) for i in range(8)]
    assert torch.allclose(stored["image_embeddings"][:8], by_hand(model, files), atol=ATOL)
    expected = TextEncoder(text_model, 32).encode(split.captions[:10])
    assert torch.allclose(stored["caption_embeddings"][:10], expected, atol=2e-3 + TEXT_ATOL)  # the cache: float16
    assert torch.equal(stored["caption_image_row"], torch.from_numpy(split.caption_image))  # all readable
    assert stored["checkpoint"].endswith("best.ckpt") and len(stored["checkpoint_sha256"]) == 64


def test_a_folder_of_images_and_a_file_of_texts(trained_run, demo_root, text_model, model, tmp_path):
    ckpt = str(trained_run / "checkpoints" / "best.ckpt")
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    sources = sorted((demo_root / "val2014").iterdir())[:3]
    for f in sources:
        (folder / f.name).write_bytes(f.read_bytes())
    images = embed.main(["--ckpt_path", ckpt, "--images", str(tmp_path / "photos"), "--out", str(tmp_path / "i.pt")])
    assert images["file_names"] == [f"nested/{f.name}" for f in sources]
    assert torch.allclose(images["image_embeddings"], by_hand(model, sources), atol=ATOL)

    texts = tmp_path / "queries.txt"
    texts.write_text("a red circle\n\n  a small blue square  \n", encoding="utf-8")
    result = embed.main(["--ckpt_path", ckpt, "--texts", str(texts)])
    assert result["texts"] == ["a red circle", "a small blue square"]
    expected = TextEncoder(text_model, 32).encode(result["texts"])
    assert torch.allclose(result["text_embeddings"], expected, atol=TEXT_ATOL)
    assert result["path"] == str(trained_run / "embeddings" / "texts-queries.pt")
    assert torch.load(result["path"], weights_only=True)["texts"] == result["texts"]


def test_texts_with_words_the_encoder_does_not_know_are_named(trained_run, tmp_path, caplog):
    texts = tmp_path / "q.txt"
    texts.write_text("a red sport\nfootball match\na blue circle\n")
    result = embed.main(
        [
            "--ckpt_path",
            str(trained_run / "checkpoints" / "best.ckpt"),
            "--texts",
            str(texts),
            "--out",
            str(tmp_path / "q.pt"),
        ]
    )
    assert result["unknown_words"] == ["sport", "football", "match"]
    warned = [r.message for r in caplog.records if "vocabulary" in r.message]
    assert len(warned) == 1 and "'sport', 'football', 'match'" in warned[0]


def test_bad_input_is_one_line(trained_run, tmp_path, capsys):
    ckpt = str(trained_run / "checkpoints" / "best.ckpt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    for argv, message in (
        ([], "one of the arguments --split --images --texts is required"),
        (["--texts", str(empty)], "holds no text"),
        (["--texts", str(latin)], "is not UTF-8"),
        (["--images", str(tmp_path / "none")], "no such image file or folder"),
        (["--split", "train2015"], "unknown split 'train2015'"),
    ):
        assert main(["embed", "--ckpt_path", ckpt, *argv]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert len(err) == 1 and message in err[0], (argv, err)
