"""`python -m clip_lab report`: `report/<run>/report.md` about one run, in the lab's sections, filled from `results/`.

Generated parts sit between `<!-- BEGIN GENERATED: name -->` and `<!-- END GENERATED: name -->` markers; a re-run
rewrites only what is between them, so everything the student writes outside them survives. Every generated part
describes the run named by `--run`, from that run's own files (its resolved config, run_stats.json, metrics.csv,
test_metrics.json, zero-shot and search results); whatever is missing becomes a line naming the command that
produces it, built from the run's own config so that it works as printed. The tables are also written as LaTeX
under `tables/`, and the report as PDF when pandoc and a PDF engine are installed.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from clip_lab.data.datasets import data_title
from clip_lab.files import read_json, save_text
from clip_lab.options import JobParser
from clip_lab.report.commands import RunCommands
from clip_lab.report.tables import (
    ablation_table,
    baselines_markdown,
    baselines_table,
    latex_table,
    markdown_table,
)

log = logging.getLogger(__name__)

KS = (1, 5, 10)
STUDENT = "<!-- Your text here: this part is yours; `python -m clip_lab report` never changes it. -->"
# keys that differ between the runs of a sweep by construction (names, seeds), not settings to report
RUN_KEYS = ("run", "results_dir", "seed_everything", "data.seed", "ckpt_path")
PDF_ENGINES = ("xelatex", "lualatex", "weasyprint", "wkhtmltopdf", "pdflatex")  # pandoc's, best Unicode first
# for the HTML engines: pandoc's own page is a narrow column (36em) that cuts the wide recall tables off
PDF_CSS = """@page { size: A4; margin: 1.6cm 1.4cm; }
html { font-size: 10pt; } body { max-width: none; margin: 0; padding: 0; }
table { font-size: 8pt; } th, td { padding: 2px 5px; } td { white-space: nowrap; }
img { max-width: 100%; } code { font-size: 0.9em; }
pre, pre code { white-space: pre-wrap; word-break: break-all; font-size: 8pt; }
"""


class Tables:
    """The report's LaTeX tables folder: what this run of `report` writes, and the removal of tables it wrote before
    that describe nothing now (a block gone missing, another run's report in the same folder)."""

    NAMES = ("test_recall", "baselines", "ablations", "zeroshot_confusion", "training_time")

    def __init__(self, folder: Path) -> None:
        self.folder, self.written = folder, set()

    def write(self, name: str, latex: str) -> None:
        save_text(latex, self.folder / f"{name}.tex")
        self.written.add(name)

    def remove_stale(self) -> None:
        for name in set(self.NAMES) - self.written:
            (self.folder / f"{name}.tex").unlink(missing_ok=True)


def missing(what: str, command: str) -> str:
    return f"> **Missing:** {what}. Produce it with:\n>\n> ```\n> {command}\n> ```"


# -- reading results/ -----------------------------------------------------------------------------------------------
def read_record(path: Path) -> dict[str, Any] | None:
    """A results file as a dict; None when it is absent, unreadable or not an object."""
    data = read_json(path)
    return data if isinstance(data, dict) else None


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"data": {"batch_size": 64}}` -> `{"data.batch_size": 64}`."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def validation_images(run_dir: Path) -> int | None:
    """How many images validation ranked checkpoints on, from the run's own log (`val/n_images`)."""
    try:
        with (run_dir / "metrics.csv").open(newline="") as f:
            counts = [r["val/n_images"] for r in csv.DictReader(f) if r.get("val/n_images")]
    except (OSError, KeyError, csv.Error):
        return None
    return int(float(counts[-1])) if counts else None


def chosen(folder: Path, name: str | None, pattern: str) -> tuple[Path | None, str]:
    """(`folder/<name>.json`, or the newest `pattern` file there when no name is given; why none, if none)."""
    if name:
        path = folder / f"{name}.json"
        return (path, "") if path.is_file() else (None, f"no {path}")
    found = sorted(folder.glob(pattern), key=lambda p: (p.stat().st_mtime, p.name))
    return (found[-1], "") if found else (None, f"no results ({pattern}) in {folder}/")


# -- the generated blocks -------------------------------------------------------------------------------------------
def title(config: dict[str, Any] | None, stats: dict[str, Any] | None, run: str) -> str:
    if config is None:  # no such run (yet): nothing to say about its data
        return f"# Fine-tuning CLIP: image–text retrieval (run `{run}`)"
    data = (stats or {}).get("data") or {}
    d = config.get("data") or {}
    dataset = data.get("title") or data_title(d.get("dataset", "coco"), split=d.get("train_split", ""))
    return f"# Fine-tuning CLIP: image–text retrieval on {dataset} (run `{run}`)"


def text_encoder_row(m: dict[str, Any], d: dict[str, Any]) -> str:
    encoder = m.get("text_encoder")
    if encoder is None:
        return (
            f"`{d.get('text_model')}` (CLIPTextModelWithProjection), frozen; captions embedded once and cached "
            f"(max {d.get('max_length')} tokens)"
        )
    if encoder == "lstm":
        return (
            f"word-level bidirectional LSTM trained from scratch ({m.get('text_layers')} layer(s), width "
            f"{m.get('text_width')}, vocabulary of {m.get('vocab_size')}), at lr {m.get('text_lr')}"
        )
    return f"`{encoder}` fine-tuned at lr {m.get('text_lr')} (mean of its last hidden states → Linear)"


def methodology(commands: RunCommands, stats: dict[str, Any] | None) -> str:
    config, run = commands.config, commands.run
    if config is None:
        return missing(f"no run `{run}` in {commands.results_dir}/ (its config.yaml)", commands.fit)
    m, d, t = config.get("model", {}), config.get("data", {}), config.get("trainer", {})
    norm = {None: "", "batch": " → BatchNorm", "layer": " → LayerNorm"}.get(m.get("head_norm"), "")
    head = (
        f"one Linear → {m.get('embed_dim', 512)} (no bias)"
        if m.get("head") == "linear"
        else f"Linear → {m.get('head_hidden')}{norm} → GELU → Linear"
    )
    augment = [
        f"random resized crop (area {d.get('crop_scale')}–1)" if d.get("crop_scale", 1) < 1 else "",
        f"horizontal flip (p = {d.get('flip')})" if d.get("flip", 0) > 0 else "",
        f"colour jitter (±{d.get('jitter')})" if d.get("jitter", 0) > 0 else "",
    ]
    augment_text = ", ".join(a for a in augment if a) or "none (the centre crop evaluation uses)"
    frozen = m.get("freeze_stages", 0)
    hw = (stats or {}).get("hardware")
    recorded = (stats or {}).get("data") or {}
    val_split = d.get("val_split") or d.get("test_split")
    n_val = recorded.get("val_images") or validation_images(commands.run_dir)
    subset = recorded.get("val_subset", d.get("val_split") is None and d.get("val_images", 0) > 0)
    subset = " (a fixed seeded subset)" if subset else ""
    val_text = f"{n_val:,} images of {val_split}{subset}" if n_val else f"{val_split} (image count not recorded)"
    if val_split == d.get("test_split"):  # the lab's COCO 2014 set-up: no third split
        val_text += (
            " — the checkpoint is chosen on images the test also evaluates (no third split), which favours "
            "the test numbers slightly"
        )
    train = recorded.get("train_images")
    train_text = f"{d.get('train_split')} ({train:,} images with captions)" if train else d.get("train_split")
    lrs = f"lr {m.get('lr')} (head, temperature) / {m.get('backbone_lr')} (backbone)"
    rows = [
        (
            "Data",
            f"{recorded.get('title') or data_title(d.get('dataset', 'coco'), split=d.get('train_split', ''))}, "
            f"`{d.get('data_root')}` "
            f"(`data.dataset: {d.get('dataset', 'coco')}`)",
        ),
        (
            "Splits",
            f"train on {train_text}, validate on {val_text}, test on {d.get('test_split')} (protocol "
            f"`{recorded.get('protocol') or d.get('protocol', 'auto')}`; see 3.1)",
        ),
        (
            "Image encoder",
            f"torchvision `{m.get('backbone')}`, weights `{m.get('weights')}`, classifier removed"
            + (f"; first {frozen} stage(s) frozen" if frozen else ""),
        ),
        ("Projection head", f"{head}, L2-normalized"),
        ("Text encoder", text_encoder_row(m, d)),
        (
            "Loss",
            f"symmetric InfoNCE, learnable temperature initialized at {m.get('temperature')} "
            f"(logit scale clamped at {m.get('max_logit_scale')})",
        ),
        ("Optimizer", f"AdamW, {lrs}, weight decay {m.get('weight_decay')} on weight matrices only"),
        ("Schedule", f"linear warmup over {100 * m.get('warmup_fraction', 0):.0f} % of the steps, then cosine to 0"),
        (
            "Batch size, epochs",
            f"{d.get('batch_size')} image–caption pairs ({d.get('pairs')} mode; the last partial "
            f"batch of each epoch is dropped), {t.get('max_epochs')} epochs, seed {config.get('seed_everything')}",
        ),
        (
            "Images",
            f"{d.get('image_size')} px crops of a {d.get('cache_image_size')} px cache; augmentation: {augment_text}",
        ),
        (
            "Precision, compile",
            f"{t.get('precision') or (hw or {}).get('precision')}, torch.compile {'on' if m.get('compile') else 'off'}",
        ),
        (
            "Hardware",
            f"{hw['devices']} x {hw['device']} ({hw['cpu_cores']} CPU cores), torch {hw['torch']}"
            if hw
            else "not recorded (no run_stats.json)",
        ),
    ]
    return markdown_table(("", f"run `{run}`"), rows)


def recall_rows(columns: list[dict[str, float] | None]) -> list[list[str]]:
    """One row per metric, one column per metrics dict (recall in %; "–" where a column has none)."""

    def cells(key: str, scale: float, fmt: str) -> list[str]:
        return [format(scale * c[key], fmt) if c and key in c else "–" for c in columns]

    rows = []
    for d, name in (("i2t", "image → text"), ("t2i", "text → image")):
        for k in KS:
            rows.append([f"{name} R@{k}", *cells(f"{d}_R@{k}", 100, ".1f")])
        rows.append([f"{name} median rank", *cells(f"{d}_median_rank", 1, "g")])
    rows.append(["R-sum", *cells("rsum", 100, ".1f")])
    return rows


def same_protocol(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two result files evaluated the same gallery (dataset, split, protocol, images and captions)."""
    keys = ("name", "gallery_images", "gallery_captions")
    return (a.get("dataset"), a.get("split")) == (b.get("dataset"), b.get("split")) and all(
        a["protocol"].get(k) == b["protocol"].get(k) for k in keys
    )


def test_results(
    result: dict[str, Any] | None, commands: RunCommands, tables: Tables, baselines: dict[str, Any] | None = None
) -> str:
    if result is None:
        return missing(f"no test results for run `{commands.run}`", commands.test)
    m = result["metrics"]
    headers = ["metric", "standard protocol (%)", "first caption only (%)"]
    columns = [m, result.get("first_caption", {}).get("metrics")]
    if baselines and same_protocol(result, baselines):  # the reference row every reader looks for
        reference = baselines["variants"][baselines["base"]]["metrics"]
        model = str(baselines.get("model") or baselines.get("clip_model", "")).rstrip("/").rsplit("/", 1)[-1]
        headers.append(f"{baselines['base']} {model}, standard (%)")
        columns.append({k: v["mean"] for k, v in reference.items()})
    rows = recall_rows(columns)
    tables.write(
        "test_recall",
        latex_table(
            headers,
            rows,
            f"Test retrieval on {result['split']} ({m['n_images']} images, {m['n_captions']} captions)",
            "tab:test_recall",
        ),
    )
    uncaptioned = m["n_images"] - m.get("i2t_n", m["n_images"])
    note = (
        f" {uncaptioned} images have no caption: they are excluded from image → text (no ground truth) and stay "
        "in the gallery for text → image."
        if uncaptioned
        else ""
    )
    protocol = result["protocol"]
    folds = protocol["folds"]
    size = f" in {folds} folds (metrics are the mean over folds)" if folds > 1 else ""
    warn = (
        f" **Not the published gallery** ({protocol.get('images'):,} images): "
        f"{protocol.get('size_note') or 'another size'}; not exactly comparable."
        if protocol.get("published_size") is False
        else ""
    )
    own = commands.ckpt.resolve() == Path(str(result.get("checkpoint"))).resolve()
    other = "" if own else f" **This checkpoint is not run `{commands.run}`'s own best checkpoint** ({commands.ckpt})."
    return (
        f"Test split {result['split']} ({result.get('dataset', 'coco')}), protocol **{protocol['name']}**: "
        f"{protocol['description']}. Evaluated: {m['n_images']:,} images, {m['n_captions']:,} captions{size}; "
        f"checkpoint `{result.get('checkpoint')}`.{other}{warn}{note}\n\n"
        + markdown_table(headers, rows)
        + "\n\nProtocols:\n\n- standard: "
        + protocol.get("rule", "")
        + "\n- "
        + result.get("first_caption", {}).get("protocol", "first caption only: not recorded")
    )


def baseline_results(
    result: dict[str, Any] | None, name: str, commands: RunCommands, tables: Tables, test: dict[str, Any] | None
) -> str:
    if result is None:
        return missing(f"no reference baselines `{commands.results_dir}/{name}.json`", commands.baselines(name))

    tables.write(
        "baselines",
        latex_table(
            *baselines_table(result),
            f"Reference baselines on {result['split']} ({result['protocol']['name']}): test recall (%)",
            "tab:baselines",
        ),
    )
    other = ""
    if test is not None and not same_protocol(test, result):
        other = (
            f"**These baselines were evaluated on another gallery than run `{commands.run}`** "
            f"({result['dataset']} {result['split']}, {result['protocol']['name']}, vs {test.get('dataset')} "
            f"{test.get('split')}, "
            f"{test['protocol']['name']}): they do not compare with its numbers; for that run "
            f"`{commands.baselines(name)}`.\n\n"
        )
    return other + baselines_markdown(result)


def sweep_settings(summary: dict[str, Any], main_config: dict[str, Any] | None, main_run: str) -> str:
    """What every run of the sweep shares, how that differs from the main run, and what each variant changes."""
    configs: dict[str, list[dict[str, Any]]] = {}
    for variant, v in summary["variants"].items():
        for run in v.get("runs", []):
            config = RunCommands(Path(run).parent, Path(run).name).config
            if config is not None:
                configs.setdefault(variant, []).append(
                    {k: val for k, val in flatten(config).items() if k not in RUN_KEYS}
                )
    every = [c for cs in configs.values() for c in cs]
    if not every:
        return "The sweep's runs have no config.yaml: their settings cannot be shown."
    keys = sorted(set().union(*every))
    shared = {k: every[0].get(k) for k in keys if all(c.get(k) == every[0].get(k) for c in every)}
    lines = []
    if main_config is not None:
        main = {k: v for k, v in flatten(main_config).items() if k not in RUN_KEYS}
        differ = [
            f"`{k}` {shared[k]!r} (run `{main_run}`: {main.get(k)!r})" for k in shared if main.get(k) != shared[k]
        ]
        lines.append(
            f"Every sweep run shares the settings of run `{main_run}`"
            + (
                ", except: " + "; ".join(differ) + "."
                if differ
                else ", apart from its variant's overlays and the seed."
            )
        )
    base = configs.get("baseline", every)[0]
    for variant, cs in configs.items():
        changes = [f"`{k}` {cs[0].get(k)!r}" for k in keys if k not in shared and cs[0].get(k) != base.get(k)]
        if variant != "baseline":
            lines.append(f"- {variant}: " + ("; ".join(changes) if changes else "no setting differs from baseline"))
    return "\n".join(lines)


def ablation_results(summary: dict[str, Any] | None, name: str, commands: RunCommands, tables: Tables) -> str:
    if summary is None:
        return missing(f"no ablation sweep `{commands.results_dir}/{name}.json`", commands.sweep(name))

    headers, rows = ablation_table(summary["variants"], summary.get("order"))
    seeds = summary.get("seeds", [])
    tables.write(
        "ablations",
        latex_table(headers, rows, f"Test recall (%) per variant, mean ± std over seeds {seeds}", "tab:ablations"),
    )
    return (
        f"Test recall in % (standard protocol), mean ± std over seeds {seeds}. A difference is *beyond the seed "
        "spread* when it exceeds two standard errors of the difference of the means.\n\n"
        + markdown_table(headers, rows)
        + "\n\n"
        + sweep_settings(summary, commands.config, commands.run)
    )


def zeroshot_results(
    path: Path | None, why: str, commands: RunCommands, tables: Tables, manifest: dict[str, Any], report_dir: Path
) -> str:
    result = read_record(path) if path else None
    if result is None or not result.get("predictions"):
        return missing(f"no zero-shot result ({why or f'{path} is unreadable'})", commands.zeroshot)
    classes, preds = result["classes"], result["predictions"]
    templates = result.get("templates", [])
    parts = [
        f"Images: {result.get('images')} ({result.get('n_images', len(preds)):,} images); classes: "
        + ", ".join(f"`{c}`" for c in classes)
        + f"; {len(templates)} prompt templates ("
        + ", ".join(f"`{t}`" for t in templates[:3])
        + (", …" if len(templates) > 3 else "")
        + f"); logit scale {result.get('logit_scale', float('nan')):.1f}; result file `{path}`."
    ]
    unknown = (result.get("unknown_words") or {}).get("classes") or {}
    if unknown:
        parts.append(
            "**The text encoder does not know** "
            + "; ".join(f"`{c}`" + ("" if words == [c] else f" ({', '.join(words)})") for c, words in unknown.items())
            + ": those words are read as its unknown token, so their classes' scores do not reflect them."
        )
    accuracy, chance = result.get("accuracy"), result.get("chance")
    tied = sum(1 for p in preds if p.get("tied"))
    if accuracy is not None and not chance:  # ground truth, but of other classes: accuracy 0 of a chance of 0
        parts.append(
            "The images have ground truth, but none of these images' true classes is among the classes: "
            "there is no accuracy to measure." + (f" {tied} images had tied top classes." if tied else "")
        )
    elif accuracy is not None:
        parts.append(
            f"**Accuracy {100 * accuracy:.1f} %** against a chance of {100 * chance:.1f} % "
            f"({accuracy / chance:.1f} x chance)."
            + (f" {tied} images had tied top classes and count as wrong." if tied else "")
        )
        parts.append(confusion(classes, preds, tables))
    else:
        counts = {c: sum(p.get("predicted") == c for p in preds) for c in classes}
        parts.append(
            "No ground truth for these images, so no accuracy; predictions per class: "
            + ", ".join(f"{c} {n}" for c, n in counts.items())
            + (f", tied {tied}" if tied else "")
            + "."
        )
    figure = manifest.get(f"zeroshot_{path.stem}", {})
    parts.append(figure_link(f"zeroshot_{path.stem}", figure, report_dir))
    return "\n\n".join(parts)


def confusion(classes: list[str], preds: list[dict[str, Any]], tables: Tables) -> str:
    """Per-class accuracy and the confusion matrix of the images with one true class (rows: truth)."""
    single = [p for p in preds if len(set(p.get("truth") or []) & set(classes)) == 1]
    columns = [*classes, "tie"]
    counts = {c: {k: 0 for k in columns} for c in classes}
    for p in single:
        (truth,) = set(p["truth"]) & set(classes)
        counts[truth]["tie" if p.get("tied") else p["predicted"]] += 1
    headers = ["true class", *[f"→ {c}" for c in columns], "images", "accuracy (%)"]
    rows = []
    for c in classes:
        n = sum(counts[c].values())
        rows.append([c, *[counts[c][k] for k in columns], n, f"{100 * counts[c][c] / n:.1f}" if n else "–"])
    tables.write(
        "zeroshot_confusion",
        latex_table(headers, rows, "Zero-shot confusion matrix (images with one true class)", "tab:zeroshot_confusion"),
    )
    several = len(preds) - len(single)
    tail = (
        f" {several} images show several of the classes (any of them counts as right) and are not in the matrix."
        if several
        else ""
    )
    return (
        "Per class, over the images with exactly one true class (rows: the true class, columns: the prediction):"
        f"{tail}\n\n" + markdown_table(headers, rows)
    )


def query_results(
    path: Path | None, why: str, commands: RunCommands, manifest: dict[str, Any], report_dir: Path
) -> str:
    result = read_record(path) if path else None
    if result is None or not result.get("results") or "text" not in result.get("query", {}):
        return missing(f"no text → image query ({why or f'{path} is not a text query result'})", commands.search)
    rows = [
        [r["rank"], f"{r['score']:.3f}", r.get("image_id"), r.get("file_name"), r.get("caption") or ""]
        for r in result["results"][:5]
    ]
    name = f"search_{path.stem.removeprefix('text-')}"
    text, unknown = result["query"]["text"], result["query"].get("unknown_words") or []
    warn = ""
    if unknown:  # the search job warned; the report must not present the ranking as if it did not
        every = set(unknown) >= set(re.findall(r"\w+", text))
        warn = (
            f" **The text encoder does not know {', '.join(f'`{w}`' for w in unknown)}**: read as its unknown "
            "token, so the ranking " + ("says nothing about the query." if every else "rests on the other words.")
        )
    return (
        f'Query **"{text}"** against the {result.get("gallery", {}).get("n", "?"):,} images '
        f"of {result.get('split')} ({result.get('score', 'cosine similarity')}; result file `{path}`).{warn}\n\n"
        + figure_link(name, manifest.get(name, {}), report_dir)
        + "\n\n"
        + markdown_table(("rank", "score", "image id", "file", "first caption"), rows)
    )


def training_time(run_dirs: list[tuple[str, Path]], tables: Tables, commands: RunCommands) -> str:
    headers = ("run", "hardware", "precision", "epochs", "fit time", "s / epoch", "train images/s")
    rows, absent, total = [], [], 0.0
    for name, d in run_dirs:
        stats = read_record(d / "run_stats.json")
        if not stats or not stats.get("epochs"):
            absent.append(name)
            continue
        hw, epochs = stats["hardware"], stats["epochs"]
        rate = [e["train_images_per_s"] for e in epochs if e.get("train_images_per_s")]
        total += stats["fit_seconds"]
        rows.append(
            [
                name,
                f"{hw['devices']} x {hw['device']}",
                hw["precision"],
                len(epochs),
                f"{stats['fit_seconds'] / 60:.1f} min",
                f"{sum(e['seconds'] for e in epochs) / len(epochs):.1f}",
                f"{sum(rate) / len(rate):,.0f}" if rate else "–",
            ]
        )
    if not rows:
        return missing(f"no run_stats.json in run `{commands.run}` (fit records it)", commands.fit)
    tables.write("training_time", latex_table(headers, rows, "Training time and hardware", "tab:time"))
    note = f"\n\nNot recorded for: {', '.join(absent)}." if absent else ""
    return (
        markdown_table(headers, rows) + f"\n\nTotal training time over these runs: {total / 60:.1f} min. "
        "Images/s counts training only (validation excluded); time includes validation." + note
    )


def figure_link(name: str, figure: dict[str, Any], report_dir: Path) -> str:
    if "png" not in figure:
        return f"**{name}**\n\n" + missing(
            figure.get("missing", "not drawn"), figure.get("command", "python -m clip_lab figures")
        )
    rel = Path(os.path.relpath(figure["png"], report_dir)).as_posix()  # links work wherever the folder goes
    return f"![{figure.get('caption', name)}]({rel})\n\n*Figure ({name}): {figure.get('caption', '')}*"


def figures_block(manifest: dict[str, Any], report_dir: Path, shown: set[str], commands: RunCommands) -> str:
    if not manifest:
        return missing(
            "no figures yet",
            f"python -m clip_lab figures --run {commands.run} --out {report_dir}/figures"
            + ("" if commands.results_dir == "results" else f" --results_dir {commands.results_dir}"),
        )
    parts = [figure_link(name, f, report_dir) for name, f in manifest.items() if name not in shown]
    return "\n\n".join(parts) if parts else "(every figure is shown in its section above)"


def appendix(commands: RunCommands) -> str:
    if commands.config is None:
        return missing(f"no run `{commands.run}`", commands.fit)
    text = yaml.safe_dump(commands.config, sort_keys=False).strip()
    return (
        f"The resolved configuration of run `{commands.run}` ({commands.config_file}):\n\n```yaml\n{text}\n```\n\n"
        f"Reproduce it with `python -m clip_lab fit -c {commands.config_file} --run {commands.run}_again`, "
        f"then `python -m clip_lab test -c {commands.run_dir}_again/config.yaml`."
    )


# -- the document: lab sections, generated blocks between markers, the student's text kept --------------------------
def begin(name: str) -> str:
    return f"<!-- BEGIN GENERATED: {name} (python -m clip_lab report rewrites this block; write outside it) -->"


def end(name: str) -> str:
    return f"<!-- END GENERATED: {name} -->"


def block(name: str, body: str) -> str:
    return f"{begin(name)}\n{body.strip()}\n{end(name)}"


def template(blocks: dict[str, str]) -> str:
    """The first version of the report: the lab's sections, generated blocks, places for the student's text."""
    return (
        "\n\n".join(
            [
                block("title", blocks["title"]),
                "## 1. Introduction",
                STUDENT,
                "## 2. Methodology",
                STUDENT,
                block("methodology", blocks["methodology"]),
                "## 3. Results",
                "### 3.1 Retrieval on the test split",
                block("test_results", blocks["test_results"]),
                "### 3.2 Reference baselines",
                block("baselines", blocks["baselines"]),
                "### 3.3 Ablations",
                block("ablations", blocks["ablations"]),
                "### 3.4 Zero-shot classification",
                block("zeroshot", blocks["zeroshot"]),
                STUDENT,
                "### 3.5 Text → image query",
                block("query", blocks["query"]),
                STUDENT,
                "### 3.6 Training time and hardware",
                block("training_time", blocks["training_time"]),
                "### 3.7 Figures",
                block("figures", blocks["figures"]),
                STUDENT,
                "## 4. Discussion",
                STUDENT,
                "## 5. Conclusion",
                STUDENT,
                "## Appendix",
                block("appendix", blocks["appendix"]),
                "## Reflection on the use of LLMs",
                STUDENT,
            ]
        )
        + "\n"
    )


def pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        r"<!-- BEGIN GENERATED: " + re.escape(name) + r"\b[^>]*-->\n?(.*?)\n?" + re.escape(end(name)), re.S
    )


def update(text: str, blocks: dict[str, str]) -> tuple[str, list[str]]:
    """`text` with each generated block's content replaced; the names of blocks the student removed (left out)."""
    gone = []
    for name, body in blocks.items():
        if pattern(name).search(text):
            text = pattern(name).sub(lambda _, name=name, body=body: block(name, body), text, count=1)
        else:
            gone.append(name)
    return text, gone


def previous_run(text: str) -> str | None:
    """The run an existing report was generated for, read from its title block."""
    match = pattern("title").search(text)
    run = re.search(r"\(run `([^`]+)`\)", match.group(1)) if match else None
    return run.group(1) if run else None


def write_pdf(report: Path) -> Path | None:
    """`report.pdf` beside `report` through pandoc and the first PDF engine installed; None (and why, said) when
    there is none or the conversion fails: the Markdown is the report, the PDF a convenience."""
    pandoc = shutil.which("pandoc")
    engine = next((e for e in PDF_ENGINES if shutil.which(e)), None)
    if pandoc is None or engine is None:
        print(
            f"no PDF written: install pandoc and a PDF engine ({', '.join(PDF_ENGINES)}), e.g. `apt-get install "
            "pandoc texlive-xetex`, for report.pdf beside report.md"
        )
        return None
    pdf = report.with_suffix(".pdf")
    tmp = pdf.with_name(f".{pdf.stem}.{os.getpid()}.tmp.pdf")  # pandoc picks the output format from the suffix
    css = pdf.with_name(f".{pdf.stem}.{os.getpid()}.tmp.css")
    css.write_text(PDF_CSS)
    args = [
        pandoc,
        report.name,
        "--from",
        "gfm",
        "--pdf-engine",
        engine,
        "--resource-path",
        ".",
        "-V",
        "geometry:margin=2cm",
        "--css",
        css.name,
        "--metadata",
        f"pagetitle={report.stem}",
        "-o",
        tmp.name,
    ]
    try:
        done = subprocess.run(args, cwd=report.parent, capture_output=True, text=True, timeout=600)
        if done.returncode == 0 and tmp.is_file():
            tmp.replace(pdf)
            return pdf
        reason = (done.stderr.strip().splitlines() or ["no message"])[0]
    except (OSError, subprocess.TimeoutExpired) as e:
        reason = f"{type(e).__name__}: {e}"
    finally:
        tmp.unlink(missing_ok=True)
        css.unlink(missing_ok=True)
    log.warning("report: pandoc with %s could not write %s (%s); report.md is complete", engine, pdf, reason)
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = JobParser(
        prog="python -m clip_lab report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default="baseline", help="the run the report is about: results/<run>/")
    parser.add_argument("--ablations", default="ablations", help="the sweep: results/<name>.json and results/<name>/")
    parser.add_argument("--baselines", default="baselines", help="the reference baselines: results/<name>.json")
    parser.add_argument(
        "--zeroshot",
        default=None,
        help="the zero-shot result of section 3.4: results/<run>/zeroshot/<NAME>.json (default: the newest)",
    )
    parser.add_argument(
        "--query",
        default=None,
        help="the text query of section 3.5: results/<run>/search/<NAME>.json, e.g. "
        "text-sport_val2014 (default: the newest text query)",
    )
    parser.add_argument("--results_dir", default="results")
    parser.add_argument(
        "--out", default=None, help="the report (default report/<run>/report.md; figures/ and tables/ go beside it)"
    )
    parser.add_argument("--no_figures", action="store_true", help="reuse the figures beside the report")
    parser.add_argument("--no_pdf", action="store_true", help="do not write report.pdf even if pandoc is installed")
    args = parser.parse_args(argv)

    report = Path(args.out or Path("report") / args.run / "report.md")
    report_dir, results = report.parent, Path(args.results_dir)
    figures_dir, tables = report_dir / "figures", Tables(report_dir / "tables")
    if args.no_figures:
        manifest = read_record(figures_dir / "figures.json") or {}
    else:
        from clip_lab.report import figures

        manifest = figures.main(
            [
                "--results_dir",
                args.results_dir,
                "--run",
                args.run,
                "--ablations",
                args.ablations,
                "--out",
                str(figures_dir),
            ]
        )
    commands = RunCommands(args.results_dir, args.run)
    run_dir = commands.run_dir
    if commands.config is None:  # a typo, or a report started before the fit: say which runs there are
        runs = sorted(str(c.parent.relative_to(results)) for c in results.glob("**/config.yaml"))
        log.warning(
            "report: no run %r in %s/ (runs there: %s); the report names the commands that produce it",
            args.run,
            results,
            ", ".join(runs[:12]) + (" ..." if len(runs) > 12 else "") if runs else "none",
        )
    stats = read_record(run_dir / "run_stats.json")
    test = read_record(run_dir / "test_metrics.json")
    summary = read_record(results / f"{args.ablations}.json")
    baselines = read_record(results / f"{args.baselines}.json")
    variants = (summary or {}).get("variants", {})
    order = (summary or {}).get("order") or list(variants)
    sweep_runs = [(f"{v}/{Path(r).name}", Path(r)) for v in order for r in variants[v].get("runs", [])]
    zeroshot, why_zeroshot = chosen(run_dir / "zeroshot", args.zeroshot, "*.json")
    query, why_query = chosen(run_dir / "search", args.query, "text-*.json")
    shown = {
        f"zeroshot_{zeroshot.stem}" if zeroshot else "zeroshot",
        f"search_{query.stem.removeprefix('text-')}" if query else "search",
    }
    blocks = {
        "title": title(commands.config, stats, args.run),
        "methodology": methodology(commands, stats),
        "test_results": test_results(test, commands, tables, baselines),
        "baselines": baseline_results(baselines, args.baselines, commands, tables, test),
        "ablations": ablation_results(summary, args.ablations, commands, tables),
        "zeroshot": zeroshot_results(zeroshot, why_zeroshot, commands, tables, manifest, report_dir),
        "query": query_results(query, why_query, commands, manifest, report_dir),
        "training_time": training_time([(args.run, run_dir), *sweep_runs], tables, commands),
        "figures": figures_block(manifest, report_dir, shown, commands),
        "appendix": appendix(commands),
    }
    if report.is_file():
        old = report.read_text()
        before = previous_run(old)
        if before and before != args.run:
            log.warning(
                "report: %s was about run %s; its generated parts now describe run %s (your own text is "
                "kept: check it still fits)",
                report,
                before,
                args.run,
            )
        text, gone = update(old, blocks)
        for name in gone:
            log.warning(
                "report: %s has no generated block %r (removed, or new in this version of clip_lab); left "
                "out: paste its BEGIN/END markers where it belongs, or delete the file to start over",
                report,
                name,
            )
    else:
        text, gone = template(blocks), []
    save_text(text, report)
    tables.remove_stale()
    pdf = None if args.no_pdf else write_pdf(report)
    n_missing = sum("**Missing:**" in b for b in blocks.values())
    print(
        f"wrote {report} ({len(blocks) - len(gone)} generated blocks, {n_missing} with missing pieces)"
        + (f", {pdf}" if pdf else "")
        + f" and LaTeX tables in {tables.folder}/"
    )
    return {"report": str(report), "blocks": blocks, "missing": n_missing, "pdf": str(pdf) if pdf else None}
