"""`python -m clip_lab figures`: the report's figures, drawn from `results/` alone (and the pictures its results name).

Each figure is written as PNG (150 dpi) and PDF under `--out`, and `<out>/figures.json` lists, per figure, its files
and a one-sentence caption, or what is missing and the command that produces it. Nothing is trained, no model is
loaded: a missing input is a `missing` entry, never a crash. Pictures come from the files the dataset's split records
name, else from the image cache; one found in neither is a grey square that the caption, the manifest
(`images_not_found`) and a warning all name.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clip_lab.files import atomic_path, read_json, save_json
from clip_lab.options import JobParser
from clip_lab.report.commands import RunCommands

log = logging.getLogger(__name__)

FIGURE_RESULTS = 25  # search results a figure draws (5 rows of 5 images, or 25 caption lines); the JSON holds all k

DPI = 150
THUMB = 160  # thumbnail side in pixels
FONT = 9  # base font size at the figure's own size (figures are 7-9 inches wide: legible at report width)
TEXT_ROWS = 6  # images shown in the image->text examples
ZEROSHOT_IMAGES = 6  # images shown in the zero-shot figure
PCA_PAIRS = 25  # image-caption pairs joined by a line in the PCA plot
CORRECT, WRONG = "#1a7f37", "#c62828"


class Missing(Exception):
    """An input a figure needs is not there (or unreadable): `what`, and the command that produces it."""

    def __init__(self, what: str, command: str) -> None:
        super().__init__(what)
        self.what, self.command = what, command


# -- inputs --------------------------------------------------------------------------------------------------------
def read_result(path: Path, command: str) -> Any:
    """A results file figures are drawn from; `Missing` (with the command that writes it) when it is absent or bad."""
    data = read_json(path)
    if data is None:
        raise Missing(f"{path} does not exist" if not path.is_file() else f"{path} is unreadable (not JSON)", command)
    return data


def epoch_curves(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{"train": (epochs, losses), "val": ...}` from a Lightning CSVLogger file: train and val are separate rows, the
    other's cells blank; several rows of one epoch (step logging) are averaged. Epochs are 1-based."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    curves = {}
    for name, column in (("train", "train/loss"), ("val", "val/loss")):
        per_epoch: dict[int, list[float]] = {}
        for row in rows:
            if row.get(column) not in (None, "") and row.get("epoch") not in (None, ""):
                per_epoch.setdefault(int(float(row["epoch"])), []).append(float(row[column]))
        if per_epoch:
            epochs = np.array(sorted(per_epoch))
            curves[name] = (epochs + 1, np.array([np.mean(per_epoch[e]) for e in epochs]))
    return curves


def thumbnail(ref: dict[str, Any] | None, size: int = THUMB) -> np.ndarray | None:
    """The central square at `size` pixels (RGB uint8) of the image a result names: its file (`file`, the path the
    dataset's split records give), else its row of the image cache (`image_cache`, `cache_row`); None when neither
    can be read."""
    from PIL import Image, ImageOps

    ref = ref or {}
    if ref.get("file"):
        try:
            with Image.open(ref["file"]) as img:  # upright, as the image cache stores it
                upright = ImageOps.exif_transpose(img).convert("RGB")
                return np.asarray(ImageOps.fit(upright, (size, size), Image.Resampling.BICUBIC))
        except (OSError, ValueError, Image.DecompressionBombError):
            pass
    if ref.get("image_cache") and isinstance(ref.get("cache_row"), int):
        try:
            square = np.load(ref["image_cache"], mmap_mode="r")[ref["cache_row"]]  # already a central square
            return np.asarray(Image.fromarray(np.asarray(square)).resize((size, size), Image.Resampling.BICUBIC))
        except (OSError, ValueError, IndexError):
            pass
    return None


def show_image(ax: Any, image: np.ndarray | None, label: str) -> None:
    """The image on `ax` without ticks; a grey square naming `label` when it could not be found (the figure's
    manifest entry lists those, and the job warns)."""
    if image is None:
        ax.imshow(np.full((THUMB, THUMB, 3), 200, np.uint8))
        ax.text(
            0.5, 0.5, f"{label}\n(image not found)", ha="center", va="center", fontsize=FONT - 1, transform=ax.transAxes
        )
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def wrap(text: str, width: int, lines: int | None = None) -> str:
    """`text` wrapped at `width` characters, cut to `lines` lines with an ellipsis."""
    out = textwrap.wrap(text, width) or [""]
    if lines is not None and len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][: width - 1].rstrip() + "…"
    return "\n".join(out)


def image_label(name: str) -> str:
    """`image 1000001` for a COCO file name (`COCO_val2014_000001000001.jpg`), else the file's short name."""
    stem = Path(name).stem
    match = re.fullmatch(r"COCO_[a-z]+\d*_(\d+)", stem)
    return f"image {int(match.group(1))}" if match else wrap(stem, 18, 2)


def variant_order(names: list[str], order: list[str] | None = None) -> list[str]:
    """The sweep's own order (`order`, as its summary records it) where it names them, then the baseline, then the
    others by name."""
    rank = {v: i for i, v in enumerate([*(order or []), "baseline"])}
    return sorted(names, key=lambda v: (rank.get(v, len(rank)), v))


def sweep_order(ctx: Context) -> list[str]:
    """The variant order the sweep's summary records, if it has one."""
    try:
        return list(json.loads(ctx.sweep_json.read_text()).get("order") or [])
    except (OSError, ValueError, AttributeError):
        return []


# -- output --------------------------------------------------------------------------------------------------------
def new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.04, h_pad=0.04)
    return fig


def save(fig: Any, out: Path, name: str) -> dict[str, str]:
    """`name.png` and `name.pdf` under `out`, each written to a temporary file beside it, then renamed."""
    paths = {}
    for fmt in ("png", "pdf"):
        path = out / f"{name}.{fmt}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight", pad_inches=0.1)  # never clip a label
        paths[fmt] = str(path)
    return paths


# -- the figures ---------------------------------------------------------------------------------------------------
def loss_figure(ctx: Context) -> tuple[Any, str]:
    main = ctx.run_dir / "metrics.csv"
    if not main.is_file():
        raise Missing(f"{main} does not exist (no training log of run {ctx.run!r})", ctx.commands.fit)
    curves = epoch_curves(main)
    if not curves:
        raise Missing(f"{main} holds no train/loss or val/loss rows", ctx.commands.fit)
    sweep: dict[str, list[tuple[str, dict]]] = {}
    for csv_file in sorted(ctx.sweep_dir.glob("*/seed*/metrics.csv")):
        seed_curves = epoch_curves(csv_file)
        if seed_curves:
            sweep.setdefault(csv_file.parent.parent.name, []).append((csv_file.parent.name, seed_curves))
    variants = variant_order(list(sweep), sweep_order(ctx))

    panels = 1 + len(variants)
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig = new_figure(3.0 * cols, 2.5 * rows + 0.4)
    grid = fig.add_gridspec(rows, cols)
    main_ax = fig.add_subplot(grid[0, 0])
    for kind, color, style in (("train", "C0", "-"), ("val", "C3", "--")):
        if kind in curves:
            main_ax.plot(*curves[kind], color=color, ls=style, lw=1.8, marker="o", ms=3, label=kind)
    main_ax.set_title(f"run {ctx.run}", fontsize=FONT + 1)
    main_ax.legend(fontsize=FONT - 1)
    axes = [main_ax]
    first_variant = None
    for p, variant in enumerate(variants, start=1):
        ax = fig.add_subplot(grid[p // cols, p % cols], sharey=main_ax, sharex=first_variant)
        first_variant = first_variant or ax
        for _, c in sweep[variant]:
            for kind, color, style in (("train", "C0", "-"), ("val", "C3", "--")):
                if kind in c:
                    ax.plot(*c[kind], color=color, ls=style, lw=0.9, alpha=0.8, marker=".", ms=3)
        seeds = [s.removeprefix("seed") for s, _ in sweep[variant]]
        ax.set_title(
            f"{ctx.ablations}: {variant}\n(seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)})", fontsize=FONT
        )
        axes.append(ax)
    if variants:
        from matplotlib.lines import Line2D

        axes[1].legend(
            [Line2D([], [], color="C0", lw=0.9), Line2D([], [], color="C3", ls="--", lw=0.9)],
            ["train (one line per seed)", "val (one line per seed)"],
            fontsize=FONT - 2,
        )
    from matplotlib.ticker import MaxNLocator

    last_epoch = {id(ax): max([x for line in ax.get_lines() for x in line.get_xdata()] or [1]) for ax in axes}
    for ax in axes:
        shared = [last_epoch[id(a)] for a in ax.get_shared_x_axes().get_siblings(ax)]
        ax.set_xlim(0.6, max(2, *shared) + 0.4)  # whole epochs, also when a run has logged only one
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=FONT - 1)
        ax.grid(alpha=0.3)
        ax.set_xlabel("epoch", fontsize=FONT)
        ax.set_ylabel("loss (InfoNCE, nats)", fontsize=FONT)
    fig.suptitle("Training (solid) and validation (dashed) loss per epoch", fontsize=FONT + 2)
    last = {k: v[1][-1] for k, v in curves.items()}
    caption = (
        f"Symmetric InfoNCE loss per epoch, training solid and validation dashed, for run {ctx.run} "
        f"(final: "
        + ", ".join(f"{k} {v:.3f}" for k, v in last.items())
        + ")"
        + (f" and for each variant of sweep {ctx.ablations}, one thin line per seed." if variants else ".")
    )
    return fig, caption


def recall_figure(ctx: Context) -> tuple[Any, str]:
    summary = read_result(ctx.sweep_json, ctx.sweep_command)
    try:
        variants = {v: d["metrics"] for v, d in summary["variants"].items()}
        seeds = summary.get("seeds", [])
        order = variant_order(list(variants), summary.get("order"))
        stats = {
            v: {
                k: (100 * variants[v][k]["mean"], 100 * variants[v][k]["std"])
                for d in ("i2t", "t2i")
                for k in (f"{d}_R@1", f"{d}_R@5", f"{d}_R@10")
            }
            for v in order
        }
    except (KeyError, TypeError, AttributeError) as e:
        raise Missing(f"{ctx.sweep_json} is not a sweep summary (no {e})", ctx.sweep_command) from e
    if not order:
        raise Missing(f"{ctx.sweep_json} lists no variants", ctx.sweep_command)

    fig = new_figure(8.5, 3.6)
    axes = fig.subplots(1, 2, sharey=True)
    width = 0.8 / len(order)
    for ax, (direction, title) in zip(axes, (("i2t", "image → text"), ("t2i", "text → image"))):
        ks = (1, 5, 10)
        for j, v in enumerate(order):
            means = [stats[v][f"{direction}_R@{k}"][0] for k in ks]
            stds = [stats[v][f"{direction}_R@{k}"][1] for k in ks]
            x = np.arange(len(ks)) + (j - (len(order) - 1) / 2) * width
            ax.bar(
                x,
                means,
                width,
                yerr=[0 if math.isnan(s) else s for s in stds],
                capsize=2,
                color=f"C{j}",
                label=v,
                error_kw={"lw": 0.8},
            )
        ax.set_xticks(np.arange(len(ks)), [f"R@{k}" for k in ks], fontsize=FONT)
        ax.set_title(title, fontsize=FONT + 1)
        ax.tick_params(labelsize=FONT - 1)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0].set_ylabel("recall (%)", fontsize=FONT)
    top = max(m + (0 if math.isnan(s) else s) for v in stats.values() for m, s in v.values())
    axes[0].set_ylim(0, min(100, top * 1.1 + 1))
    fig.legend(
        *axes[0].get_legend_handles_labels(),
        loc="outside right center",
        fontsize=FONT - 1,
        title="variant",
        title_fontsize=FONT - 1,
    )
    spread = f"mean ± std over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else "one seed, no spread"
    fig.suptitle(f"Test recall of sweep {ctx.ablations} ({spread})", fontsize=FONT + 2)
    best = max(order, key=lambda v: variants[v]["rsum"]["mean"]) if all("rsum" in variants[v] for v in order) else None
    caption = (
        f"Test Recall@1/5/10 in both directions for each variant of sweep {ctx.ablations}, bars the mean and "
        f"error bars the standard deviation over {len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
        + (f"; {best} has the highest rsum." if best else ".")
    )
    return fig, caption


def search_figure(ctx: Context, path: Path) -> tuple[Any, str]:
    result = read_result(path, ctx.commands.search)
    try:
        text, rows, split = result["query"]["text"], result["results"], result.get("split", "")
    except (KeyError, TypeError) as e:
        raise Missing(f"{path} is not a text search result (no {e})", ctx.commands.search) from e
    if not rows:
        raise Missing(f"{path} holds no results", ctx.commands.search)
    found, rows = len(rows), rows[:FIGURE_RESULTS]
    cols = min(5, len(rows))
    n_rows = math.ceil(len(rows) / cols)
    fig = new_figure(1.75 * cols + 0.3, 2.55 * n_rows + 0.5)
    axes = list(fig.subplots(n_rows, cols, squeeze=False).flat)
    for ax in axes:
        ax.axis("off")
    for ax, r in zip(axes, rows):
        ax.axis("on")
        show_image(ax, ctx.thumb(r, f"image {r.get('image_id')}"), f"image {r.get('image_id')}")
        ax.set_title(f"#{r['rank']}   {r['score']:.3f}", fontsize=FONT)
        ax.set_xlabel(wrap(r.get("caption") or "(no caption)", 24, 3), fontsize=FONT - 1)
    fig.suptitle(
        wrap(f'"{text}"', 60, 2) + f"\ntop {len(rows)} images of {split} (rank, cosine similarity)", fontsize=FONT + 1
    )
    caption = (
        f'The {len(rows)} images of {split} closest to the query "{text}" by cosine similarity, with their '
        "rank, score and first caption"
        + (f" (the first {len(rows)} of the {found} the search returned)." if found > len(rows) else ".")
    )
    return fig, caption


def text_lines(ax: Any, texts: list[str], line: float, colors: list[str] | None = None) -> None:
    """`texts` one under another from the top left of `ax`, each as many lines down as it holds (`line` points each)."""
    offset = 0.0
    for text, color in zip(texts, colors or [None] * len(texts)):
        ax.annotate(
            text,
            (0, 1),
            xycoords="axes fraction",
            xytext=(0, -offset),
            textcoords="offset points",
            va="top",
            fontsize=FONT - 1,
            color=color,
        )
        offset += line * (text.count("\n") + 1)


def i2t_figure(ctx: Context) -> tuple[Any, str]:
    examples = read_result(ctx.run_dir / "test_examples.json", ctx.commands.test)
    try:
        rows = examples["retrieval"][:TEXT_ROWS]
        _ = [(r["file"], r["captions"], r["retrieved"]) for r in rows]
    except (KeyError, TypeError) as e:
        raise Missing(
            f"{ctx.run_dir / 'test_examples.json'} has no retrieval examples (no {e})", ctx.commands.test
        ) from e
    if not rows:
        raise Missing(f"{ctx.run_dir / 'test_examples.json'} has no retrieval examples", ctx.commands.test)
    k = max(len(r["retrieved"]) for r in rows)
    fig = new_figure(8.5, 1.55 * len(rows) + 0.6)
    axes = fig.subplots(len(rows), 3, squeeze=False, width_ratios=[1.0, 3.1, 3.6])
    line = FONT * 1.28  # points per text line
    for i, (r, (ax_img, ax_truth, ax_ret)) in enumerate(zip(rows, axes)):
        show_image(ax_img, ctx.thumb(r, f"image {r['image_id']}"), f"image {r['image_id']}")
        ax_img.set_title(f"image {r['image_id']}", fontsize=FONT - 1)
        for ax in (ax_truth, ax_ret):
            ax.axis("off")
        text_lines(ax_truth, ["• " + wrap(c, 44, 2).replace("\n", "\n   ") for c in r["captions"][:5]], line)
        text_lines(
            ax_ret,
            [
                f"{'✓' if h['correct'] else '✗'} {h['score']:.3f}  "
                + wrap(h["caption"], 44, 2).replace("\n", "\n" + " " * 14)
                for h in r["retrieved"]
            ],
            line,
            [CORRECT if h["correct"] else WRONG for h in r["retrieved"]],
        )
        if i == 0:
            ax_truth.set_title("ground-truth captions", fontsize=FONT, loc="left")
            ax_ret.set_title(f"top {k} retrieved, cosine (✓ this image's, ✗ another's)", fontsize=FONT, loc="left")
    fig.suptitle("Image → text retrieval on the test split", fontsize=FONT + 2)
    hits = sum(any(h["correct"] for h in r["retrieved"][:1]) for r in rows)
    caption = (
        f"Image-to-text retrieval for {len(rows)} seeded test images: their ground-truth captions beside the "
        f"top {k} captions retrieved from the whole test split ({hits} of {len(rows)} right at rank 1)."
    )
    return fig, caption


def zeroshot_figure(ctx: Context, path: Path) -> tuple[Any, str]:
    result = read_result(path, ctx.commands.zeroshot)
    try:
        classes, preds = result["classes"], result["predictions"]
        _ = [(p["image"], p["probs"], p["predicted"]) for p in preds]
    except (KeyError, TypeError) as e:
        raise Missing(f"{path} is not a zero-shot result (no {e})", ctx.commands.zeroshot) from e
    if not preds:
        raise Missing(f"{path} holds no predictions", ctx.commands.zeroshot)

    labelled = all("correct" in p for p in preds)
    if labelled:  # half right, half wrong, each the first in the file's order: successes and failures alike
        right = [p for p in preds if p["correct"]]
        wrong = [p for p in preds if not p["correct"]]
        half = ZEROSHOT_IMAGES // 2
        shown = right[: max(half, ZEROSHOT_IMAGES - len(wrong))]
        shown += wrong[: ZEROSHOT_IMAGES - len(shown)]
        shown = sorted(shown, key=preds.index)
    else:
        shown = preds[:ZEROSHOT_IMAGES]
    cols = 2
    n_rows = math.ceil(len(shown) / cols)
    fig = new_figure(8.5, 1.75 * n_rows + 0.7)
    axes = fig.subplots(n_rows, 2 * cols, squeeze=False, width_ratios=[1, 2.1] * cols)
    for ax in axes.flat:
        ax.axis("off")
    for i, p in enumerate(shown):
        ax_img, ax_bar = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        ax_img.axis("on")
        ax_bar.axis("on")
        name = image_label(p["image"])
        show_image(ax_img, ctx.thumb(p, name), name)
        probs = [p["probs"].get(c, 0.0) for c in classes]
        truth = set(p.get("truth") or [])
        picked = p.get("tied") or [p["predicted"]]  # a tie (`predicted` null) picks its tied classes, and is wrong
        colors = [
            (CORRECT if p["correct"] else WRONG) if c in picked and labelled else ("C0" if c in picked else "0.7")
            for c in classes
        ]
        y = np.arange(len(classes))
        ax_bar.barh(y, probs, color=colors, height=0.7)
        ax_bar.set_yticks(y, [c + (" *" if c in truth else "") for c in classes], fontsize=FONT - 1)
        ax_bar.invert_yaxis()
        ax_bar.set_xlim(0, 1)
        ax_bar.tick_params(axis="x", labelsize=FONT - 2)
        ax_bar.grid(axis="x", alpha=0.3)
        ax_bar.set_axisbelow(True)
        if i // cols == n_rows - 1 or i + cols >= len(shown):
            ax_bar.set_xlabel("probability", fontsize=FONT - 1)
        verdict = ("  ✓" if p["correct"] else "  ✗") if labelled else ""
        ax_img.set_title(name, fontsize=FONT - 1)
        head = f"tie {'/'.join(picked)}" if p.get("tied") else p["predicted"]
        ax_bar.set_title(
            f"{head} {p['probs'].get(picked[0], 0):.2f}{verdict}",
            fontsize=FONT,
            color=(CORRECT if p["correct"] else WRONG) if labelled else "black",
            loc="left",
        )
    accuracy, chance = result.get("accuracy"), result.get("chance")
    score = f"; accuracy {accuracy:.2f}, chance {chance:.2f}" if accuracy is not None and chance else ""
    fig.suptitle(
        f"Zero-shot classification of {result.get('images', path.stem)} ({result.get('n_images', len(preds))} "
        f"images{score})" + ("\n* marks a true class" if labelled else ""),
        fontsize=FONT + 1,
    )
    caption = (
        f"Zero-shot class probabilities over {', '.join(classes)} for {len(shown)} images of "
        f"{result.get('images', path.stem)}"
        + (
            f" (the first {sum(p['correct'] for p in shown)} right and first "
            f"{sum(not p['correct'] for p in shown)} wrong predictions; accuracy {accuracy:.2f} over all "
            f"{len(preds)} against a chance of {chance:.2f})."
            if labelled and accuracy is not None and chance
            else "."
        )
    )
    return fig, caption


def similarity_figure(ctx: Context) -> tuple[Any, str]:
    examples = read_result(ctx.run_dir / "test_examples.json", ctx.commands.test)
    try:
        sim = examples["similarity"]
        images, captions, matrix = sim["images"], sim["captions"], np.asarray(sim["matrix"], dtype=float)
    except (KeyError, TypeError, ValueError) as e:
        raise Missing(
            f"{ctx.run_dir / 'test_examples.json'} has no similarity matrix (no {e})", ctx.commands.test
        ) from e
    n = len(images)
    if n == 0 or matrix.shape != (n, len(captions)):
        raise Missing(
            f"{ctx.run_dir / 'test_examples.json'} has an empty or inconsistent similarity matrix", ctx.commands.test
        )
    cell = min(0.75, 6.0 / max(n, len(captions)))
    fig = new_figure(cell * (len(captions) + 1.4) + 2.2, cell * n + 2.0)
    ax = fig.subplots()
    heat = ax.imshow(matrix, cmap="viridis", extent=(-0.5, len(captions) - 0.5, n - 0.5, -0.5))
    for i, im in enumerate(images):  # thumbnails in a column left of the rows they label
        thumb = ctx.thumb(im, f"image {im.get('image_id')}")
        if thumb is None:
            thumb = np.full((THUMB, THUMB, 3), 200, np.uint8)
        ax.imshow(thumb, extent=(-1.55, -0.6, i + 0.475, i - 0.475))
    ax.set_xlim(-1.6, len(captions) - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if n <= 12:
        lo, hi = np.nanmin(matrix), np.nanmax(matrix)
        for i in range(n):
            for j in range(len(captions)):
                light = matrix[i, j] < lo + 0.6 * (hi - lo)
                ax.text(
                    j,
                    i,
                    f"{matrix[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=FONT - 2,
                    color="white" if light else "black",
                    fontweight="bold" if i == j else "normal",
                )
    ax.set_yticks(range(n), [f"image {im.get('image_id')}" for im in images], fontsize=FONT - 1)
    ax.set_xticks(
        range(len(captions)),
        [wrap(c, 22, 3) for c in captions],
        rotation=60,
        ha="right",
        rotation_mode="anchor",
        fontsize=FONT - 2,
    )
    ax.tick_params(length=0)
    bar = fig.colorbar(heat, ax=ax, shrink=0.8, pad=0.02)
    bar.set_label("cosine similarity", fontsize=FONT)
    bar.ax.tick_params(labelsize=FONT - 1)
    ax.set_xlabel("first caption of each image (column j belongs to row j's image)", fontsize=FONT - 1)
    fig.suptitle(f"Cosine similarity of {n} test images and their first captions", fontsize=FONT + 1)
    diagonal_best = int(sum(np.argmax(matrix[i]) == i for i in range(min(n, len(captions)))))
    caption = (
        f"Cosine similarity between {n} test images (rows) and their first captions (columns), the matched "
        f"pairs on the diagonal; {diagonal_best} of {n} images score highest with their own caption."
    )
    return fig, caption


def pca_2d(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(`[n, 2]` coordinates on the first two principal components, % of the variance each explains), by SVD of
    the centered points."""
    centered = points - points.mean(axis=0)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    return centered @ vt[:2].T, 100 * s[:2] ** 2 / max(float((s**2).sum()), 1e-30)


def pca_figure(ctx: Context) -> tuple[Any, str]:
    path = ctx.run_dir / "test_embeddings.pt"
    if not path.is_file():
        raise Missing(f"{path} does not exist", ctx.commands.test)
    import torch

    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        image, caption = stored["image"].float().numpy(), stored["caption"].float().numpy()
    except (OSError, RuntimeError, KeyError, TypeError, AttributeError, EOFError, ValueError) as e:
        raise Missing(f"{path} is unreadable ({type(e).__name__})", ctx.commands.test) from e
    if len(image) < 2 or image.shape != caption.shape:
        raise Missing(f"{path} holds {len(image)} image and {len(caption)} caption embeddings", ctx.commands.test)
    xy, explained = pca_2d(np.concatenate([image, caption]))
    img_xy, cap_xy = xy[: len(image)], xy[len(image) :]
    n = len(image)

    fig = new_figure(6.2, 5.2)
    ax = fig.subplots()
    pairs = np.linspace(0, n - 1, min(PCA_PAIRS, n)).round().astype(int)
    for i in pairs:
        ax.plot([img_xy[i, 0], cap_xy[i, 0]], [img_xy[i, 1], cap_xy[i, 1]], color="0.45", lw=0.6, alpha=0.7, zorder=1)
    ax.scatter(*img_xy.T, s=10, color="C0", alpha=0.6, label=f"images ({n})", zorder=2, linewidths=0)
    ax.scatter(
        *cap_xy.T, s=16, color="C1", marker="x", alpha=0.7, label=f"first captions ({n})", zorder=2, linewidths=0.9
    )
    ax.plot([], [], color="0.45", lw=0.6, label=f"{len(pairs)} image-caption pairs")
    ax.set_xlabel(f"PC 1 ({explained[0]:.1f} % of variance)", fontsize=FONT)
    ax.set_ylabel(f"PC 2 ({explained[1]:.1f} % of variance)", fontsize=FONT)
    ax.tick_params(labelsize=FONT - 1)
    ax.grid(alpha=0.3)
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=FONT - 1, loc="best", framealpha=0.9)
    ax.set_title(f"PCA of {n} test image embeddings and their first captions' embeddings", fontsize=FONT + 1)
    gap = float(np.linalg.norm(image.mean(axis=0) - caption.mean(axis=0)))
    caption_text = (
        f"The first two principal components (of both modalities together, {explained.sum():.1f} % of the "
        f"variance) of {n} test images and their first captions, lines joining {len(pairs)} matched pairs; "
        f"the distance between the two modalities' mean embeddings is {gap:.2f}."
    )
    return fig, caption_text


# -- the job -------------------------------------------------------------------------------------------------------
class Context:
    """Where the inputs are, the commands that make each of them, and the pictures a figure could not find."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.results = Path(args.results_dir)
        self.run, self.ablations = args.run, args.ablations
        self.run_dir = self.results / self.run
        self.sweep_dir = self.results / self.ablations
        self.sweep_json = self.results / f"{self.ablations}.json"
        self.commands = RunCommands(args.results_dir, self.run)
        self.sweep_command = self.commands.sweep(self.ablations)
        self.not_found: list[str] = []  # of the figure being drawn

    def thumb(self, ref: dict[str, Any] | None, label: str) -> np.ndarray | None:
        """`thumbnail(ref)`; one that cannot be found is remembered (under its file, or `label`)."""
        image = thumbnail(ref)
        if image is None:
            self.not_found.append(str((ref or {}).get("file") or label))
        return image


def figures(ctx: Context) -> dict[str, Callable[[], tuple[Any, str]]]:
    """Figure name -> the function that draws it (one figure per text query and per zero-shot result found)."""
    jobs: dict[str, Callable[[], tuple[Any, str]]] = {
        "loss": lambda: loss_figure(ctx),
        "recall_ablations": lambda: recall_figure(ctx),
    }
    for kind, folder, pattern, draw, command in (
        ("search", "search", "text-*.json", search_figure, ctx.commands.search),
        ("zeroshot", "zeroshot", "*.json", zeroshot_figure, ctx.commands.zeroshot),
    ):
        found = sorted((ctx.run_dir / folder).glob(pattern))
        for path in found:
            jobs[f"{kind}_{path.stem.removeprefix('text-')}"] = lambda draw=draw, path=path: draw(ctx, path)
        if not found:

            def absent(folder: str = folder, pattern: str = pattern, command: str = command) -> tuple[Any, str]:
                raise Missing(f"no results ({pattern}) in {ctx.run_dir / folder}/", command)

            jobs[kind] = absent
    jobs |= {
        "i2t_examples": lambda: i2t_figure(ctx),
        "similarity": lambda: similarity_figure(ctx),
        "embeddings_pca": lambda: pca_figure(ctx),
    }
    return jobs


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = JobParser(
        prog="python -m clip_lab figures", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results_dir", default="results", help="where runs and sweep summaries are")
    parser.add_argument("--run", default="baseline", help="the main run: <results_dir>/<run>/")
    parser.add_argument("--ablations", default="ablations", help="sweep name: <results_dir>/<name>.json and <name>/")
    parser.add_argument(
        "--out", default=None, help="folder for the PNG and PDF files and figures.json (default report/<run>/figures)"
    )
    args = parser.parse_args(argv)
    ctx = Context(args)
    out = Path(args.out or Path("report") / args.run / "figures")

    old_files = set()  # what figures.json said this folder held before (only those: other files are not ours)
    if (out / "figures.json").is_file():
        try:
            previous = json.loads((out / "figures.json").read_text())
            old_files = {
                Path(p).name
                for e in previous.values()
                if isinstance(e, dict)
                for k, p in e.items()
                if k in ("png", "pdf")
            }
        except ValueError:
            pass
    manifest: dict[str, dict[str, Any]] = {}
    jobs = figures(ctx)
    width = max(map(len, jobs)) + 1
    for name, draw in jobs.items():
        ctx.not_found = []
        try:
            fig, caption = draw()
        except Missing as m:
            manifest[name] = {"missing": m.what, "command": m.command}
            print(f"{name:<{width}} MISSING {m.what}; run: {m.command}")
            continue
        entry: dict[str, Any] = save(fig, out, name)
        if ctx.not_found:  # never a silent grey square: the caption, the manifest and a warning say so
            n = len(ctx.not_found)
            what = (
                "1 of its pictures could not be found and is a grey square"
                if n == 1
                else f"{n} of its pictures could not be found and are grey squares"
            )
            caption += f" {what}: " + ", ".join(ctx.not_found[:3]) + (" and more" if n > 3 else "") + "."
            entry["images_not_found"] = ctx.not_found
            log.warning(
                "figure %s: %d picture%s could not be found (neither the file nor the image cache), drawn as "
                "grey squares; first: %s",
                name,
                n,
                "" if n == 1 else "s",
                ctx.not_found[0],
            )
        manifest[name] = entry | {"caption": caption}
        print(f"{name:<{width}} {entry['png']} (+ .pdf)")
    # the figures this folder held that this run of `figures` did not draw (another run's, a result since removed)
    # would be picked up by whoever copies the folder: remove them
    drawn = {Path(path).name for entry in manifest.values() for key, path in entry.items() if key in ("png", "pdf")}
    for stale in old_files - drawn:
        (out / stale).unlink(missing_ok=True)
    save_json(manifest, out / "figures.json")
    print(f"wrote {out / 'figures.json'}")
    return manifest
