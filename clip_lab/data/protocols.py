"""Named test protocols (COCO 5k / 1k, Flickr 1k, val2014, val2017): the split, folds and captions a number uses."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from clip_lab.errors import ClipLabError

RULE = (
    "image->text counts a hit at K when any of the image's captions ranks in the top K; text->image when the "
    "caption's own image does; ties count against the model"
)

FLICKR_TEST = (
    ("flickr8k", "test"),
    ("flickr8k_karpathy", "test"),
    ("flickr30k", "test"),
    ("flickr8k_kaggle", "test"),
    ("flickr30k_kaggle", "test"),
)


@dataclass(frozen=True)
class Protocol:
    """How a test split is evaluated.

    `folds`: the images are cut into this many consecutive blocks (file order), each block a gallery of its own with
    only its images' captions; the metrics are the mean over blocks. `captions_per_image`: each image keeps its first
    k captions (None: all). `images`: the test split's size in the published protocol (a different count, e.g.
    after unreadable images were skipped, is recorded and warned about). `applies_to`: the (dataset, test split)
    pairs the protocol is defined on; empty: any.
    """

    name: str
    description: str
    applies_to: tuple[tuple[str, str], ...] = ()
    folds: int = 1
    captions_per_image: int | None = None
    images: int | None = None

    def record(
        self, n_images: int, n_captions: int, split_images: int | None = None, unreadable: int = 0
    ) -> dict[str, Any]:
        """What a result file says about its protocol, with the gallery actually evaluated: `n_images` of the test
        split's `split_images`, `unreadable` of them skipped; `size_note` says why that is not the published size."""
        out = asdict(self)
        out.pop("applies_to")
        published = None if self.images is None else n_images == self.images
        notes = []
        if published is False and split_images is not None and split_images != self.images:
            notes.append(
                f"the test split has {split_images:,} image{'' if split_images == 1 else 's'}, not the "
                f"{self.images:,} of protocol {self.name} "
                "(a subset of the dataset, another split, or other data in its layout)"
            )
        if unreadable:
            notes.append(f"{unreadable:,} unreadable images of the split were skipped")
        if published is False and not notes:
            notes.append(f"{n_images:,} images were evaluated where protocol {self.name} has {self.images:,}")
        return out | {
            "rule": RULE,
            "gallery_images": n_images,
            "gallery_captions": n_captions,
            "gallery_images_per_fold": n_images // self.folds,
            "split_images": split_images,
            "unreadable_skipped": unreadable,
            "published_size": published,
            "size_note": "; ".join(notes) if published is False else None,
        }


PROTOCOLS = {
    p.name: p
    for p in (
        Protocol(
            "coco5k",
            "COCO Karpathy test split: 5,000 images, each with its first 5 captions (25,000)",
            (("coco_karpathy", "test"),),
            folds=1,
            captions_per_image=5,
            images=5000,
        ),
        Protocol(
            "coco1k",
            "COCO Karpathy test split in 5 folds of 1,000 images (5,000 captions each), mean over folds",
            (("coco_karpathy", "test"),),
            folds=5,
            captions_per_image=5,
            images=5000,
        ),
        Protocol(
            "flickr1k",
            "Flickr test split: 1,000 images, each with its first 5 captions (5,000)",
            FLICKR_TEST,
            folds=1,
            captions_per_image=5,
            images=1000,
        ),
        Protocol(
            "val2014",
            "all of COCO val2014: 40,504 images with all their captions",
            (("coco", "val2014"),),
            images=40504,
        ),
        Protocol(
            "val2017", "all of COCO val2017: 5,000 images with all their captions", (("coco", "val2017"),), images=5000
        ),
        Protocol("full", "every image of the test split with all its captions"),
    )
}

DEFAULTS = {
    ("coco_karpathy", "test"): "coco5k",
    ("coco", "val2014"): "val2014",
    ("coco", "val2017"): "val2017",
    **{d: "flickr1k" for d in FLICKR_TEST},
}


def resolve_protocol(name: str, dataset: str, split: str) -> Protocol:
    """The protocol `name` ("auto": the standard one of `dataset`'s `split`, else "full"), checked to apply there."""
    if name == "auto":
        return PROTOCOLS[DEFAULTS.get((dataset, split), "full")]
    if name not in PROTOCOLS:
        raise ClipLabError(f"unknown protocol {name!r}; choose auto or one of: {', '.join(PROTOCOLS)}")
    protocol = PROTOCOLS[name]
    if protocol.applies_to and (dataset, split) not in protocol.applies_to:
        fits = [p for p, v in PROTOCOLS.items() if not v.applies_to or (dataset, split) in v.applies_to]
        where = ", ".join(f"{d} {s}" for d, s in protocol.applies_to)
        raise ClipLabError(
            f"protocol {name} is defined on {where}, not on dataset {dataset} split {split}; for "
            f"that split choose one of: auto, {', '.join(fits)}"
        )
    return protocol
