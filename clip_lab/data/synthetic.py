"""A generated captioned dataset in COCO 2014 layout (real JPEGs, real captions JSON) and a tiny random full CLIP.

Images hold one or two coloured shapes; each image gets five captions naming colour, shape, size and position, so
retrieval is learnable. The model is a `CLIPModel` (text and image towers) saved with `save_pretrained` next to a
word-level tokenizer and an image processor: the demo loads it through the same `from_pretrained` paths as OpenAI's.
A tiny random DistilBERT beside it stands in for `distilbert-base-uncased` as a trained text encoder, and a random
CLIP text tower of ViT-B/32's shape with a BPE tokenizer on COCO-like captions serves the benchmark and tests: every
generated model is made here.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from clip_lab.data.datasets import DEMO_DESCRIPTION
from clip_lab.models.text import quiet_transformers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 215, 40),
    "purple": (140, 60, 190),
    "orange": (250, 140, 30),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES = {"small": 0.22, "large": 0.38}  # shape size as a fraction of the image's shorter side
SPECIAL = ("<pad>", "<unk>", "<bos>", "<eos>")  # ids 0-3; eos != 2 so CLIP pools at the eos token, not argmax(ids)
# COCO 2014's common image sizes, repeated roughly in proportion (most are 640 wide with a 480 or ~427 high side)
COCO_SIZES = ((640, 480),) * 10 + ((480, 640),) * 3 + ((640, 427),) * 4 + ((427, 640),) + ((640, 425),) + ((500, 375),)
TEMPLATE_WORDS = (
    "a an the of on to in and one two next picture photo shapes shape that is left right middle "
    "plain background side centre"
).split()


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, color: tuple) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=color)
    else:  # cross
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=color)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=color)


def _captions(objects: list[dict]) -> list[str]:
    if len(objects) == 1:
        (o,) = objects
        c, s, z, p = o["color"], o["shape"], o["size"], o["position"]
        return [
            f"a {z} {c} {s}",
            f"a {c} {s} on the {p}",
            f"a picture of a {c} {s}",
            f"one {z} {c} {s} on a plain background",
            f"a {s} that is {c}",
        ]
    a, b = objects
    return [
        f"a {a['color']} {a['shape']} and a {b['color']} {b['shape']}",
        f"a {a['color']} {a['shape']} to the left of a {b['color']} {b['shape']}",
        f"a {b['color']} {b['shape']} on the right and a {a['color']} {a['shape']} on the left",
        f"two shapes: a {a['color']} {a['shape']} and a {b['color']} {b['shape']}",
        f"a {a['size']} {a['color']} {a['shape']} next to a {b['size']} {b['color']} {b['shape']}",
    ]


def _spec(rng: random.Random, sides: tuple[int, int], sizes: Sequence[tuple[int, int]] | None) -> dict:
    """Draw one image's content (size, background, objects, JPEG quality); rendering is separate so it can run
    in parallel while the draws stay one sequential, seeded stream."""
    w, h = rng.choice(sizes) if sizes else (rng.randint(*sides), rng.randint(*sides))
    side = min(w, h)  # shapes stay in the central square, which survives a centre crop
    x0, y0 = (w - side) / 2, (h - side) / 2
    background = tuple(rng.randint(90, 170) for _ in range(3))
    n = rng.choice((1, 2))
    if n == 1:
        slots = [rng.choice([("left", 0.3), ("middle", 0.5), ("right", 0.7)])]
    else:
        slots = [("left", 0.27), ("right", 0.73)]
    objects = []
    for position, fx in slots:
        color, shape, size = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(SIZES))
        r = SIZES[size] * side / (2 if n == 2 else 1.6)
        cx, cy = x0 + fx * side + rng.uniform(-0.04, 0.04) * side, y0 + rng.uniform(0.4, 0.6) * side
        objects.append({"color": color, "shape": shape, "size": size, "position": position, "xyr": (cx, cy, r)})
    return {"w": w, "h": h, "background": background, "objects": objects, "quality": rng.randint(80, 95)}


def _render(task: tuple[dict, str]) -> None:
    spec, path = task
    img = Image.new("RGB", (spec["w"], spec["h"]), spec["background"])
    draw = ImageDraw.Draw(img)
    for o in spec["objects"]:
        _draw(draw, o["shape"], *o["xyr"], COLORS[o["color"]])
    img.save(path, quality=spec["quality"])


def write_shape_image(path: str | Path, rng: random.Random, sides: tuple[int, int] = (100, 200)) -> list[str]:
    """Draw one image from `rng` as the demo does, save it as a JPEG at `path` and return its five captions.

    For writing the same visual vocabulary in other datasets' formats (the test fixtures); the demo does not use it.
    """
    spec = _spec(rng, sides, None)
    _render((spec, str(path)))
    return _captions(spec["objects"])


def make_split(
    root: Path,
    split: str,
    n_images: int,
    seed: int,
    first_image_id: int,
    first_ann_id: int,
    sides: tuple[int, int] = (100, 200),
    sizes: Sequence[tuple[int, int]] | None = None,
    workers: int = 1,
    file_name: str = "COCO_{split}_{id:012d}.jpg",
) -> None:
    """Write `root/<split>/*.jpg` and `root/annotations/captions_<split>.json` in the official COCO 2014 format.

    Width and height are each drawn from the range `sides`, or (width, height) from the list `sizes` when given
    (e.g. `COCO_SIZES`); `workers` processes render and encode the JPEGs (the content depends on `seed` alone).
    `file_name` names each image: COCO 2014's pattern by default, `{id:012d}.jpg` for 2017's.
    """
    rng = random.Random(seed)
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations, tasks = [], [], []
    for k in range(n_images):
        image_id = first_image_id + k
        spec = _spec(rng, sides, sizes)
        name = file_name.format(split=split, id=image_id)
        tasks.append((spec, str(root / split / name)))
        images.append(
            {
                "id": image_id,
                "file_name": name,
                "width": spec["w"],
                "height": spec["h"],
                "demo_shapes": [o["shape"] for o in spec["objects"]],
            }
        )
        for caption in _captions(spec["objects"]):
            annotations.append({"id": first_ann_id + len(annotations), "image_id": image_id, "caption": caption})
    if workers > 1:
        with multiprocessing.get_context().Pool(workers) as pool:
            for _ in pool.imap_unordered(_render, tasks, chunksize=64):
                pass
    else:
        for task in tasks:
            _render(task)
    (root / "annotations").mkdir(exist_ok=True)
    info = {"description": f"{DEMO_DESCRIPTION} in COCO 2014 captions format", "version": "1.0"}
    payload = {"info": info, "licenses": [], "images": images, "annotations": annotations}
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(payload))


def vocabulary() -> list[str]:
    words = set(TEMPLATE_WORDS) | set(COLORS) | set(SHAPES) | set(SIZES) | {":"}
    return list(SPECIAL) + sorted(words)


def _tokenizer() -> PreTrainedTokenizerFast:
    """The demo's word-level tokenizer: `<bos> words <eos>`, lowercased, split on whitespace and punctuation."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=32,
    )


def make_clip_model(
    path: Path,
    seed: int = 0,
    width: int = 128,
    layers: int = 2,
    projection_dim: int = 128,
    image_size: int = 64,
    patch_size: int = 8,
    vision_width: int = 128,
    vision_layers: int = 2,
) -> None:
    """Save a randomly initialized small full CLIP (`CLIPModel`), its tokenizer and image processor to `path`.

    The folder loads like OpenAI's: `CLIPTextModelWithProjection`, `CLIPVisionModelWithProjection`, `AutoTokenizer`,
    `CLIPImageProcessor` and `AutoConfig` all take it. The text tower is drawn first, alone, from `seed`, exactly as
    the demo's text-only model was (format 1), and copied in: the demo's caption embeddings stay bit-identical.
    """
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
    )

    tokenizer = _tokenizer()
    vocab = tokenizer.get_vocab()
    text_config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=32,
        projection_dim=projection_dim,
        bos_token_id=vocab["<bos>"],
        eos_token_id=vocab["<eos>"],
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(seed)
    text = CLIPTextModelWithProjection(text_config)  # must stay the first draw after the seed (see the docstring)
    vision_config = CLIPVisionConfig(
        hidden_size=vision_width,
        intermediate_size=2 * vision_width,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=projection_dim,
    )
    # dicts, not config objects: the form every transformers version's CLIPConfig accepts
    config = CLIPConfig(
        text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), projection_dim=projection_dim
    )
    model = CLIPModel(config)
    missing, unexpected = model.load_state_dict(text.state_dict(), strict=False)
    if unexpected or any(k.startswith(("text_model.", "text_projection.")) for k in missing):
        raise RuntimeError(f"text tower does not fit CLIPModel: unexpected {unexpected}, missing {missing}")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    square = {"height": image_size, "width": image_size}
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=square).save_pretrained(path)


# the image tower of the tiny SigLIP and BLIP: the full models hold one (a test runs BLIP's for its own cosine)
TINY_VIT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=8
)
TINY_SQUARE = {"height": 32, "width": 32}  # their image processors' resize


def _tiny_text_config(vocab: dict[str, int], width: int, layers: int, max_length: int, **extra: Any) -> dict:
    """The text tower's config of the tiny test models of other families, over the demo's tokenizer `vocab`."""
    return dict(
        vocab_size=len(vocab),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<bos>"],
        eos_token_id=vocab["<eos>"],
        **extra,
    )


def make_siglip_model(path: Path, seed: int = 0, width: int = 64, layers: int = 2, max_length: int = 16) -> None:
    """Save a randomly initialized small full SigLIP (`SiglipModel`) with the demo's tokenizer to `path`: a SigLIP
    text tower for the tests (`SiglipTextModel` and `AutoConfig` take the folder as they take Google's). SigLIP's own
    tokenizer is a SentencePiece model; the tower reads whatever ids its tokenizer gives."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    tokenizer = _tokenizer()
    text = _tiny_text_config(tokenizer.get_vocab(), width, layers, max_length)
    torch.manual_seed(seed)
    vision = TINY_VIT | {"hidden_size": width, "intermediate_size": 2 * width}  # both towers embed `width` wide
    SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    SiglipImageProcessor(size=TINY_SQUARE).save_pretrained(path)  # Google's: squash to the side, mean = std = 0.5


def make_blip_model(path: Path, seed: int = 0, width: int = 64, layers: int = 2, embed_dim: int = 40) -> None:
    """Save a randomly initialized small BLIP retrieval model (`BlipForImageTextRetrieval`: the architecture of
    Salesforce/blip-itm-base-coco) with the demo's tokenizer to `path`: a BLIP text tower for the tests."""
    import torch
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor

    tokenizer = _tokenizer()
    vocab = tokenizer.get_vocab()
    text = _tiny_text_config(
        vocab,
        width,
        layers,
        32,
        encoder_hidden_size=TINY_VIT["hidden_size"],  # the vision width its cross-attention (the ITM head's) reads
        sep_token_id=vocab["<eos>"],
        # BLIP's default 0.02 leaves a random tower's [CLS] state all but equal for every caption (cosines 0.9999):
        # at 0.2 captions differ as a trained tower's do (cosines ~0.3-0.9), so a test can learn against it
        initializer_range=0.2,
    )
    config = BlipConfig(
        text_config=text,
        vision_config=TINY_VIT,
        image_text_hidden_size=embed_dim,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    BlipForImageTextRetrieval(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    BlipImageProcessor(size=TINY_SQUARE).save_pretrained(path)  # Salesforce's: squash to the side, CLIP's mean and std


def make_align_model(path: Path, seed: int = 0, width: int = 64, layers: int = 2) -> None:
    """Save a randomly initialized small ALIGN (`AlignModel`: kakaobrain/align-base's architecture, a BERT text tower
    and a shrunken EfficientNet) with the demo's tokenizer to `path`. Its embeddings are 32 wide: the shrunken
    EfficientNet's pooled width, which the text projection maps to (640 both in kakaobrain's)."""
    import torch
    from transformers import AlignConfig, AlignModel, EfficientNetImageProcessor

    tokenizer = _tokenizer()
    # initializer_range as make_blip_model's: at 0.02 a random BERT's [CLS] is the same for every caption
    text = _tiny_text_config(tokenizer.get_vocab(), width, layers, 32, initializer_range=0.2)
    vision = dict(image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=64)
    torch.manual_seed(seed)
    config = AlignConfig(text_config=text, vision_config=vision, projection_dim=32, initializer_range=0.2)
    model = AlignModel(config)
    # a fixed-std init shrinks the EfficientNet's activations layer by layer (pooled features ~1e-18, the model's own
    # cosines NaN): fan-in-scaled convolutions keep them ~1, as a trained one's are
    for m in model.vision_model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    # EfficientNet's processor with every step it has on: resize, centre crop, levels to [-1, 1], the std twice
    EfficientNetImageProcessor(
        size={"height": 40, "width": 40},
        crop_size=TINY_SQUARE,
        do_center_crop=True,
        rescale_factor=1 / 127.5,
        rescale_offset=True,
        include_top=True,
    ).save_pretrained(path)


def make_open_clip_model(
    path: Path,
    seed: int = 0,
    width: int = 32,
    embed_dim: int = 48,
    context_length: int = 32,
    resize_mode: str = "shortest",
) -> dict:
    """Save a randomly initialized small OpenCLIP model (`open_clip.model.CLIP`: a ViT and OpenAI's BPE text tower)
    to `path` as open_clip's own `local-dir:` folder holds one (open_clip_config.json, open_clip_model.safetensors);
    return its model config. Load it as `open_clip:local-dir:<path>`."""
    import open_clip
    import torch
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    config = {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": width, "head_width": 8, "patch_size": 8},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": width, "heads": 4, "layers": 2},
    }
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**config)
    preprocess = {"size": 32, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3), "interpolation": "bicubic"}
    open_clip.model.set_model_preprocess_cfg(model, preprocess | {"mode": "RGB", "resize_mode": resize_mode})
    path.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(path / "open_clip_model.safetensors"))
    save_config_for_hf(model, path / "open_clip_config.json", model_config=config)
    return config


def make_bert_model(path: Path, seed: int = 0, width: int = 64, layers: int = 2, vocab_size: int | None = None) -> None:
    """Save a randomly initialized small DistilBERT (`DistilBertModel`) and its WordPiece tokenizer to `path`: the
    stand-in for `distilbert-base-uncased` when a trained transformer text encoder runs on the demo data.
    `vocab_size` pads the embedding table beyond the demo's words (the benchmark's 30,522, DistilBERT's)."""
    import torch
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + vocabulary()[len(SPECIAL) :]
    tokenizer = DistilBertTokenizer(vocab={w: i for i, w in enumerate(words)}, model_max_length=64)
    config = DistilBertConfig(
        vocab_size=max(len(words), vocab_size or 0),
        dim=width,
        n_layers=layers,
        n_heads=max(4, width // 64),
        hidden_dim=4 * width if vocab_size else 2 * width,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    DistilBertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


# words of COCO captions, for caption-cache timing at COCO's caption length (~10.5 words)
COCO_WORDS = (
    "a an the of on in with and is are to at next near two three man woman people person child boy girl "
    "group sitting standing walking riding holding playing eating looking street table plate pizza cat dog "
    "horse bus train car truck bike motorcycle field grass tree water beach ocean sky kite surfboard skateboard "
    "snow skis frisbee ball tennis baseball bat player game kitchen room bathroom toilet sink bed couch "
    "window building city road sign traffic light clock tower large small white black red blue green yellow "
    "brown old young little big front top side down up while its their other some many each food sandwich "
    "cake donut banana apple orange broccoli bowl cup glass bottle laptop computer phone umbrella bench"
).split()


def coco_like_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(COCO_WORDS, k=rng.randint(8, 14))) + "." for _ in range(n)]


def make_clip_text_model(path: Path, captions: list[str], small: bool) -> None:
    """A random-weight `CLIPTextModelWithProjection` of ViT-B/32's text-tower shape (12 x 512, 77 tokens) with a
    CLIP-style BPE tokenizer (lower-case, `</w>` word ends, start/end tokens) trained on `captions`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast

    bos, eos = "<|startoftext|>", "<|endoftext|>"
    tok = Tokenizer(models.BPE(unk_token=eos, end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=49408, special_tokens=[bos, eos], end_of_word_suffix="</w>", show_progress=False
    )
    tok.train_from_iterator(captions[:20000], trainer)
    bos_id, eos_id = tok.token_to_id(bos), tok.token_to_id(eos)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, bos_id), (eos, eos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos, unk_token=eos, model_max_length=77
    )
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4) if small else {}
    config = CLIPTextConfig(vocab_size=49408, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id, **shape)
    CLIPTextModelWithProjection(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def make_demo_dataset(
    root: str | Path,
    n_train: int = 2000,
    n_val: int = 400,
    seed: int = 0,
    sides: tuple[int, int] = (100, 200),
    sizes: Sequence[tuple[int, int]] | None = None,
    projection_dim: int = 128,
    workers: int = 1,
) -> Path:
    """Generate the demo dataset under `root` (once: a finished dataset is reused) and return `root`.

    `sides` bounds the images' width and height, or `sizes` lists them (the benchmark uses `COCO_SIZES`);
    `projection_dim` is the text embedding width; `workers` processes encode the JPEGs. Writes into a temporary
    folder renamed into place at the end, so an interrupted run leaves nothing half-made.
    """
    root = Path(root)
    done = root / "DONE.json"
    spec = {
        "n_train": n_train,
        "n_val": n_val,
        "seed": seed,
        "sides": list(sides),
        "sizes": [list(s) for s in sizes] if sizes else None,
        "projection_dim": projection_dim,
        "format": 3,
    }
    if done.is_file() and json.loads(done.read_text()) == spec:
        return root
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shape = {"sides": sides, "sizes": sizes, "workers": workers}
    make_split(tmp, "train2014", n_train, seed, first_image_id=1, first_ann_id=1, **shape)
    make_split(tmp, "val2014", n_val, seed + 1, first_image_id=1_000_001, first_ann_id=10_000_001, **shape)
    quiet_transformers()  # writing a few MB needs no progress bar
    make_clip_model(tmp / "clip_tiny", seed=seed, projection_dim=projection_dim)
    make_bert_model(tmp / "bert_tiny", seed=seed)
    (tmp / "DONE.json").write_text(json.dumps(spec))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root
