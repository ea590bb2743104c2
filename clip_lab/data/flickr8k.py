"""The official Flickr8k text files (Flickr8k.token.txt and the three split lists) -> a `CaptionedSplit`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from clip_lab.data.split import CaptionedSplit, build_split
from clip_lab.errors import ClipLabError

FLICKR8K_DOWNLOAD = {
    "text": "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_text.zip",
    "images": "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_Dataset.zip",
}
FLICKR8K_FIX = f"re-download the text files ({FLICKR8K_DOWNLOAD['text']})"
TOKEN_FILE = "Flickr8k.token.txt"
SPLIT_LISTS = {  # our split name -> its official list; "val" is the dev list
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
FLICKR8K_SPLITS = tuple(SPLIT_LISTS)  # the official order: ids of captionless listed images follow it


def _lines(path: str | Path) -> list[str]:
    """The file's lines, split on "\\n" only so that line numbers are stable ids; a CR before it is left in."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ClipLabError(f"{path} is not a readable UTF-8 text file ({type(e).__name__}: {e}); {FLICKR8K_FIX}") from e
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def read_token_file(path: str | Path) -> tuple[dict[str, int], list[tuple[int, str, str]], Counter]:
    """Image name -> id (order of first appearance), (line number, image name, caption) records, and the defects.

    A line must read `<image>#<k>\\t<caption>` with k a number, else it is skipped (malformed_lines); a second line
    for the same image and k is skipped (duplicate_captions); blank lines are skipped (blank_lines); kept lines with
    trailing whitespace or a CR are counted (untrimmed_lines) and stripped. An empty caption is kept for build_split
    to count.
    """
    ids: dict[str, int] = {}
    records, seen, defects = [], set(), Counter()
    for number, line in enumerate(_lines(path)):
        if not line.strip():
            defects["blank_lines"] += 1
            continue
        key, tab, text = line.partition("\t")
        image, hash_, k = key.strip().rpartition("#")
        if not (tab and hash_ and image and k.isascii() and k.isdigit()):
            defects["malformed_lines"] += 1
            continue
        if (image, int(k)) in seen:
            defects["duplicate_captions"] += 1
            continue
        seen.add((image, int(k)))
        if text.strip() and line != line.rstrip():  # an empty caption's line ends in its tab: not counted twice
            defects["untrimmed_lines"] += 1
        ids.setdefault(image, len(ids))
        records.append((number, image, text))
    return ids, records, defects


def read_split_lists(lists: Mapping[str, str | Path]) -> tuple[dict[str, list[str]], Counter]:
    """Each split's image names in list order, and the defects of the three lists.

    A name listed again (in the same list or a later one) stays where it was first listed (duplicate_list_entries),
    so no image is in two splits; blank lines are skipped (blank_lines); names are stripped (untrimmed_lines).
    """
    owner: dict[str, str] = {}
    defects: Counter = Counter()
    for split in FLICKR8K_SPLITS:
        for line in _lines(lists[split]):
            name = line.strip()
            if not name:
                defects["blank_lines"] += 1
            elif name in owner:
                defects["duplicate_list_entries"] += 1
            else:
                if line != line.rstrip():  # a CR (CRLF line ends) or trailing spaces
                    defects["untrimmed_lines"] += 1
                owner[name] = split
    return {split: [n for n, s in owner.items() if s == split] for split in FLICKR8K_SPLITS}, defects


def load_flickr8k_split(
    token_file: str | Path,
    split_lists: Mapping[str, str | Path],
    image_dir: str | Path,
    split: str = "test",
    name: str | None = None,
) -> CaptionedSplit:
    """Split "train", "val" (the dev list) or "test" of the official Flickr8k files as a `CaptionedSplit`.

    Image id = order of first appearance in the token file, the same whichever split is read; listed images absent
    from it follow, in train, dev, test list order, and stay in their split without captions (gallery distractors,
    counted in images_without_captions). Caption id = 0-based line number in the token file. Token-file images in
    no list are dropped (images_in_no_split: in the official file about 92 by a public repackaging's count, not
    checked here, among them `2258277193_586949ec62.jpg.1`, which is not an image). The files' defects are
    counted whichever split is read, empty captions and images without captions only among the split's own. `name`
    defaults to `flickr8k_<split>`.
    """
    if split not in FLICKR8K_SPLITS:
        raise ClipLabError(f"unknown Flickr8k split {split!r}: use one of {', '.join(FLICKR8K_SPLITS)}")
    ids, records, defects = read_token_file(token_file)
    members, list_defects = read_split_lists(split_lists)
    defects.update(list_defects)
    listed = {n for names in members.values() for n in names}
    defects["images_in_no_split"] = sum(1 for image in ids if image not in listed)
    for image in (n for s in FLICKR8K_SPLITS for n in members[s]):
        ids.setdefault(image, len(ids))
    names = set(members[split])
    if not names:
        raise ClipLabError(f"{split_lists[split]} lists no image; {FLICKR8K_FIX}")
    defects["images_without_captions"] = len(names - {image for _, image, _ in records})
    return build_split(
        name or f"flickr8k_{split}",
        Path(token_file),
        Path(image_dir),
        [(ids[n], n) for n in members[split]],
        [(number, ids[image], text) for number, image, text in records if image in names],
        dict(defects),
        fix=FLICKR8K_FIX,
    )
