"""Tiny datasets in the real Flickr8k and Karpathy formats (rendered JPEGs), with the known defects planted, and the
answers a reader must give for each split."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from clip_lab.data.synthetic import write_shape_image

SIDES = (48, 96)  # small images keep the fixtures fast
GHOST = "2258277193_586949ec62.jpg.1"  # the official token file captions this name, which is no image
Images = list[tuple[int, str, list[tuple[int, str]]]]  # [(image id, file name, [(caption id, caption)])] in id order


@dataclass
class Expected:
    """What reading the written files must give: each split's images and the defects counted."""

    annotation_file: Path
    image_dir: Path
    images: dict[str, Images]  # split -> its images, in id order, each with its captions in caption-id order
    file_defects: dict[str, int]  # counted whichever split is read
    split_defects: dict[str, dict[str, int]]  # counted among a split's own images only

    def of(self, selector: str) -> tuple[Images, dict[str, int]]:
        """The images and defects of a split or of several joined with "+"."""
        parts = selector.split("+")
        defects = Counter(self.file_defects)
        for part in parts:
            defects.update(self.split_defects.get(part, {}))
        return sorted(im for part in parts for im in self.images[part]), {k: v for k, v in defects.items() if v}


def _flickr_name(rng: random.Random) -> str:
    return f"{rng.randrange(10**9, 10**10)}_{rng.getrandbits(40):010x}.jpg"


def write_flickr8k(
    root: Path, text_dir: str = "Flickr8k_text", image_dir: str = "Flicker8k_Dataset", seed: int = 0
) -> Expected:
    """The official Flickr8k layout: token file, three split lists and the image folder, with every known defect.

    17 images: train 8 + 1 listed without captions, dev 3, test 3 + 1 listed without captions, 1 captioned but in no
    list; the token file also captions GHOST, and holds malformed, duplicate, blank, empty, CRLF and 6th-caption lines.
    """
    rng = random.Random(seed)
    (root / image_dir).mkdir(parents=True)
    names = [_flickr_name(rng) for _ in range(17)]
    captions = {n: write_shape_image(root / image_dir / n, rng, SIDES) for n in names}
    captions[GHOST] = [f"a photo of nothing number {k}" for k in range(5)]
    train, val, test, unlisted = names[0:8], names[8:11], names[11:14], names[14]
    lists = {"train": train + [names[15]], "val": val, "test": test + [names[16]]}
    defects, split_defects = (
        Counter(),
        {"train": {"images_without_captions": 1}, "val": {"empty_captions": 1}, "test": {"images_without_captions": 1}},
    )

    lines, ids, kept = [], {}, {}

    def line(text: str, image: str | None = None, caption: str | None = None) -> None:
        """A token line; `image` when well formed (its first such line fixes the id), `caption` when it is kept."""
        if image is not None:
            ids.setdefault(image, len(ids))
        if caption is not None:
            kept.setdefault(image, []).append((len(lines), caption.strip()))
        lines.append(text)

    line(f"{val[2]}#x\t{captions[val[2]][0]}")  # k not a number, before the image's first good line
    defects["malformed_lines"] += 1
    order = names[:15]
    rng.shuffle(order)
    order.insert(2, GHOST)  # in the middle, so it shifts the ids after it
    for image in order:
        caps = captions[image] + (["a sixth caption for this one"] if image == train[1] else [])
        for k, cap in enumerate(caps):
            listed = image not in (GHOST, unlisted)
            if image == val[0] and k == 3:
                line(f"{image}#{k}\t", image)  # empty caption: kept by the reader, dropped by build_split
            elif image == test[1] and k == 4:
                line(f"{image}#{k} {cap}")  # a space, not a tab
                defects["malformed_lines"] += 1
            elif (image, k) in ((test[0], 1), (train[3], 2)):
                line(f"{image}#{k}\t{cap}" + ("\r" if image == test[0] else "  "), image, cap)
                defects["untrimmed_lines"] += 1
            else:
                line(f"{image}#{k}\t{cap}", image, cap if listed else None)
        if image == train[4]:
            line(f"{image}\t{caps[0]}")  # no #k
            line("")
            defects["malformed_lines"] += 1
            defects["blank_lines"] += 1
    line(f"{train[2]}#2\ta second caption number two")  # the first one wins
    defects["duplicate_captions"] += 1
    defects["images_in_no_split"] = 2  # GHOST and `unlisted`

    list_lines = {
        "train": lists["train"][:4] + [""] + lists["train"][4:] + [train[0]],  # a blank line, a repeat
        "val": val,
        "test": lists["test"] + [val[1]],
    }  # a dev image listed again: it stays in dev
    list_lines["train"][1] += "\r"
    list_lines["test"][0] += " "
    defects.update(blank_lines=1, duplicate_list_entries=2, untrimmed_lines=2)
    for image in [n for s in ("train", "val", "test") for n in lists[s]]:
        ids.setdefault(image, len(ids))  # listed images without captions come after the token file's

    text = root / text_dir
    text.mkdir(parents=True, exist_ok=True)
    (text / "Flickr8k.token.txt").write_bytes(("\n".join(lines) + "\n").encode())
    files = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt", "test": "Flickr_8k.testImages.txt"}
    for split, file in files.items():
        end = "" if split == "val" else "\n"  # one list without a final newline
        (text / file).write_bytes(("\n".join(list_lines[split]) + end).encode())
    images = {s: sorted((ids[n], n, kept.get(n, [])) for n in members) for s, members in lists.items()}
    return Expected(text / "Flickr8k.token.txt", root / image_dir, images, dict(defects), split_defects)


KARPATHY_IMAGES = {"coco": ".", "flickr8k": "Flicker8k_Dataset", "flickr30k": "flickr30k-images"}


def write_karpathy(root: Path, dataset: str = "coco", seed: int = 0) -> Expected:
    """Karpathy's `dataset_<dataset>.json` and its images under `root`, in the layout the registry expects.

    13 images in mixed split order, plus one with an unknown split value and one listing an earlier image again; one
    image has 6 sentences, one none, one a sentence without raw, one a blank raw, one a sentid used before.
    """
    rng = random.Random(seed)
    coco = dataset == "coco"
    plan = [
        "test",
        "test",
        "val",
        "train",
        "restval",
        "train",
        "train",
        "restval",
        "test",
        "val",
        "train",
        "train",
        "restval",
    ]
    plan = plan if coco else [s.replace("restval", "train") for s in plan]
    plan.insert(6, "extra")  # an unknown split value
    entries, sentid = [], 0
    images = {s: [] for s in ("train", "restval", "val", "test") if coco or s != "restval"}
    for imgid, split in enumerate(plan):
        folder = ("train2014" if split == "train" else "val2014") if coco else KARPATHY_IMAGES[dataset]
        cocoid = rng.randrange(1, 600_000)
        filename = (
            f"COCO_{folder}_{cocoid:012d}.jpg"
            if coco
            else (_flickr_name(rng) if dataset == "flickr8k" else f"{rng.randrange(10**6, 10**10)}.jpg")
        )
        (root / folder).mkdir(parents=True, exist_ok=True)
        raws = write_shape_image(root / folder / filename, rng, SIDES)
        if imgid == 1:
            raws.append("one more sentence ")  # a sixth, with a trailing space
        if imgid == 5:
            raws = []
        sentences = []
        for raw in raws:
            sentences.append({"tokens": raw.replace(":", "").split(), "raw": raw, "imgid": imgid, "sentid": sentid})
            sentid += 1
        if imgid == 2:
            del sentences[1]["raw"]
        if imgid == 4:
            sentences[0]["raw"] = "   "
        if imgid == 8:
            sentences[2]["sentid"] = 0  # entry 0's first sentence has it: this one is dropped
        entry = {
            "filename": filename,
            "imgid": imgid,
            "split": split,
            "sentids": [s["sentid"] for s in sentences],
            "sentences": sentences,
        }
        if coco:
            entry.update(filepath=folder, cocoid=cocoid)
        entries.append(entry)
        if split in images:
            caps = [
                (s["sentid"], s["raw"].strip())
                for s in sentences
                if s.get("raw", "").strip() and not (imgid == 8 and s["sentid"] == 0)
            ]
            images[split].append((imgid, f"{folder}/{filename}" if coco else filename, caps))
    again = json.loads(json.dumps(entries[3]))  # the same image listed again, under a new imgid
    again.update(imgid=len(entries), split="test")
    for s in again["sentences"]:
        s["sentid"], sentid = sentid, sentid + 1
    again["sentids"] = [s["sentid"] for s in again["sentences"]]
    entries.append(again)
    ann = root / f"dataset_{dataset}.json"
    ann.write_text(json.dumps({"images": entries, "dataset": dataset}))
    empty = "restval" if coco else "train"
    split_defects = {"val": {"empty_captions": 1}, "train": {"images_without_captions": 1}}
    split_defects.setdefault(empty, {})["empty_captions"] = 1
    file_defects = {"unknown_split_images": 1, "duplicate_images": 1, "duplicate_captions": 1}
    return Expected(ann, root if coco else root / KARPATHY_IMAGES[dataset], images, file_defects, split_defects)


COCO2017_INFO = {
    "description": "COCO 2017 Dataset",
    "url": "http://cocodataset.org",
    "version": "1.0",
    "year": 2017,
    "contributor": "COCO Consortium",
    "date_created": "2017/09/01",
}


def write_coco2017(root: Path, n_train: int = 24, n_val: int = 12, seed: int = 0) -> Path:
    """The official COCO 2017 layout: `train2017/`, `val2017/` of `<12-digit id>.jpg` files and
    `annotations/captions_{train,val}2017.json` with the release's info block, licenses and image fields."""
    from clip_lab.data.synthetic import make_split

    for split, n, first in (("train2017", n_train, 1), ("val2017", n_val, 500_001)):
        make_split(root, split, n, seed + first, first, 10 * first, sides=SIDES, file_name="{id:012d}.jpg")
        ann = root / "annotations" / f"captions_{split}.json"
        data = json.loads(ann.read_text())
        data["info"], data["licenses"] = (
            COCO2017_INFO,
            [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"}],
        )
        for image in data["images"]:
            image.pop("demo_shapes")
            image.update(
                license=4,
                coco_url=f"http://images.cocodataset.org/{split}/{image['file_name']}",
                date_captured="2013-11-14 11:18:45",
                flickr_url="http://farm3.staticflickr.com/x.jpg",
            )
        ann.write_text(json.dumps(data))
    return root


def odd_jpegs(paths: list[Path]) -> None:
    """Re-save the first four images as the kinds real downloads hold: grayscale, CMYK, progressive, EXIF-rotated."""
    from PIL import Image

    grey, cmyk, progressive, rotated = paths[:4]
    Image.open(grey).convert("L").save(grey, quality=90)
    Image.open(cmyk).convert("CMYK").save(cmyk, quality=90)
    Image.open(progressive).save(progressive, quality=90, progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter: shown upright by a viewer that reads the tag
    Image.open(rotated).transpose(Image.Transpose.ROTATE_90).save(rotated, quality=90, exif=exif.tobytes())


def write_kaggle_flickr8k(root: Path, n: int = 24, lists: str | None = None, seed: int = 0) -> dict[str, list]:
    """Kaggle's Flickr8k: `Images/` and `captions.txt` (header `image,caption`, CRLF line ends, captions with commas
    quoted, five rows per image) with a malformed row and a blank line, and odd JPEGs (`odd_jpegs`); `lists`:
    "official" writes Flickr8k_text/Flickr_8k.*Images.txt beside it, "karpathy" dataset_flickr8k.json. Returns the
    images' captions by name (what a reader must keep) and the lists written."""
    import csv
    import io

    rng = random.Random(seed)
    (root / "Images").mkdir(parents=True)
    names = [_flickr_name(rng) for _ in range(n)]
    captions = {name: write_shape_image(root / "Images" / name, rng, SIDES) for name in names}
    captions[names[0]][1] = "a red circle, left of a blue square, on grey"  # a comma: quoted in the CSV
    odd_jpegs([root / "Images" / name for name in names[1:5]])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # csv quotes as Kaggle's file does
    writer.writerow(["image", "caption"])
    for name in names:
        for caption in captions[name]:
            writer.writerow([name, caption])
    text = out.getvalue() + "\r\n" + "just one field\r\n"  # a blank line, a malformed row
    (root / "captions.txt").write_bytes(text.encode())
    written = {}
    if lists == "official":
        text_dir = root / "Flickr8k_text"
        text_dir.mkdir()
        written = {"train": names[:16], "val": names[16:20], "test": names[20:]}
        for split, file in (("train", "trainImages"), ("val", "devImages"), ("test", "testImages")):
            (text_dir / f"Flickr_8k.{file}.txt").write_text("\n".join(written[split]) + "\n")
    elif lists == "karpathy":
        written = {"train": names[4:], "val": names[:2], "test": names[2:4]}
        split_of = {name: split for split, members in written.items() for name in members}
        images = [
            {
                "filename": name,
                "imgid": k,
                "split": split_of[name],
                "sentences": [
                    {"raw": c, "sentid": 5 * k + j, "imgid": k, "tokens": c.split()}
                    for j, c in enumerate(captions[name])
                ],
            }
            for k, name in enumerate(names)
        ]
        (root / "dataset_flickr8k.json").write_text(json.dumps({"images": images, "dataset": "flickr8k"}))
    return {"captions": captions, "lists": written}


def write_kaggle_flickr30k(root: Path, n: int = 24, seed: int = 0) -> dict[str, list]:
    """Kaggle's Flickr30k as its zip unpacks: `flickr30k_images/results.csv` (`image_name| comment_number| comment`,
    `|` with spaces, unquoted quotes in comments, one row whose number and comment lost their `|`, a malformed row)
    beside `flickr30k_images/flickr30k_images/`. Returns the captions a reader must keep, by image."""
    rng = random.Random(seed)
    images = root / "flickr30k_images" / "flickr30k_images"
    images.mkdir(parents=True)
    names = [f"{rng.randrange(10**6, 10**10)}.jpg" for _ in range(n)]
    captions = {name: write_shape_image(images / name, rng, SIDES) for name in names}
    captions[names[2]][0] = 'a sign reading "stop" and a red circle'
    odd_jpegs([images / name for name in names[1:5]])
    lines = ["image_name| comment_number| comment"]
    for name in names:
        for k, caption in enumerate(captions[name]):
            lines.append(f"{name}| {k} {caption}" if (name, k) == (names[3], 4) else f"{name}| {k}| {caption}")
    lines.append("garbage without separators")
    (root / "flickr30k_images" / "results.csv").write_text("\n".join(lines) + "\n")
    return {"captions": captions, "lists": {}}


def write_hf_parquet(root: Path, layout: str = "flickr30k", n: int = 24, seed: int = 0) -> dict[str, dict]:
    """A Hugging Face dataset as the Hub stores it, in parquet shards with the image bytes in a struct column.

    "flickr30k" (as nlphuji/flickr30k): `data/test-0000N-of-00002.parquet`, columns image {bytes, path}, caption (a
    list), sentids, split ("train" / "val" / "test"), img_id, filename. "flickr8k" (as jxie/flickr8k): shards named by
    split (`train-`, `validation-`, `test-`), columns image {bytes, path: None} and caption_0..caption_4. Four images
    are grayscale, CMYK, progressive and EXIF-rotated JPEGs; one row has no captions. Returns, per file name, its
    bytes, captions and split.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    scratch = root / ".scratch"
    scratch.mkdir(parents=True)
    names = [f"{rng.randrange(10**6, 10**10)}.jpg" for _ in range(n)]
    captions = {name: write_shape_image(scratch / name, rng, SIDES) for name in names}
    odd_jpegs([scratch / name for name in names[:4]])
    splits = {name: "test" if k % 6 == 0 else "val" if k % 6 == 1 else "train" for k, name in enumerate(names)}
    truth = {
        name: {"bytes": (scratch / name).read_bytes(), "captions": captions[name], "split": splits[name]}
        for name in names
    }
    empty = f"{rng.randrange(10**6, 10**10)}.jpg"  # a row without captions: skipped
    (root / "data").mkdir()
    if layout == "flickr30k":
        table = [
            {
                "image": {"bytes": truth[m]["bytes"], "path": m},
                "caption": truth[m]["captions"],
                "sentids": [str(5 * k + j) for j in range(5)],
                "split": splits[m],
                "img_id": str(k),
                "filename": m,
            }
            for k, m in enumerate(names)
        ]
        table.append(
            {
                "image": {"bytes": truth[names[5]]["bytes"], "path": empty},
                "caption": [],
                "sentids": [],
                "split": "train",
                "img_id": "x",
                "filename": empty,
            }
        )
        for part in range(2):
            pq.write_table(pa.Table.from_pylist(table[part::2]), root / "data" / f"test-0000{part}-of-00002.parquet")
    else:
        by_split: dict[str, list] = {}
        for m in names:
            row = {"image": {"bytes": truth[m]["bytes"], "path": None}} | {
                f"caption_{j}": c for j, c in enumerate(truth[m]["captions"])
            }
            by_split.setdefault(splits[m], []).append(row)
        by_split["train"].append({"image": {"bytes": None, "path": None}} | {f"caption_{j}": "x" for j in range(5)})
        for split, table in by_split.items():
            shard = {"val": "validation"}.get(split, split)
            pq.write_table(pa.Table.from_pylist(table), root / "data" / f"{shard}-00000-of-00001.parquet")
    for f in scratch.iterdir():
        f.unlink()
    scratch.rmdir()
    return truth
