"""`python -m clip_lab report`: `report/report.md` in the lab's sections, generated parts filled from `results/`.

Generated parts sit between `<!-- BEGIN GENERATED: name -->` and `<!-- END GENERATED: name -->` markers; a re-run
rewrites only what is between them, so everything the student writes outside them survives. The results tables
are also written as LaTeX under `report/tables/`. Whatever is missing (no test yet, no sweep, no zero-shot output)
becomes a line in the report naming the command that produces it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml

from clip_lab.files import atomic_path
from clip_lab.tables import latex_table, markdown_table

log = logging.getLogger(__name__)

KS = (1, 5, 10)
STUDENT = "<!-- Your text here: this part is yours; `python -m clip_lab report` never changes it. -->"


def missing(what: str, command: str) -> str:
    return f"> **Missing:** {what}. Produce it with:\n>\n> ```\n> {command}\n> ```"


# -- reading results/ -----------------------------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_config(run_dir: Path) -> dict[str, Any] | None:
    try:
        return yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None


def commands(run: str, results_dir: str) -> dict[str, str]:
    d = f"{results_dir}/{run}"
    return {
        "fit": f"python -m clip_lab fit -c configs/coco.yaml --run {run}",
        "test": f"python -m clip_lab test -c {d}/config.yaml --ckpt_path {d}/checkpoints/best.ckpt",
    }


# -- the generated blocks -------------------------------------------------------------------------------------------
def methodology(config: dict[str, Any] | None, stats: dict[str, Any] | None, run: str, results_dir: str) -> str:
    if config is None:
        return missing(f"no run `{run}` in {results_dir}/ (its config.yaml)", commands(run, results_dir)["fit"])
    m, d, t = config.get("model", {}), config.get("data", {}), config.get("trainer", {})
    norm = {None: "", "batch": " → BatchNorm", "layer": " → LayerNorm"}.get(m.get("head_norm"), "")
    augment = [f"random resized crop (area {d.get('crop_scale')}–1)" if d.get("crop_scale", 1) < 1 else "",
               f"horizontal flip (p = {d.get('flip')})" if d.get("flip", 0) > 0 else "",
               f"colour jitter (±{d.get('jitter')})" if d.get("jitter", 0) > 0 else ""]
    augment_text = ", ".join(a for a in augment if a) or "none (the centre crop evaluation uses)"
    frozen = m.get("freeze_stages", 0)
    hw = (stats or {}).get("hardware")
    rows = [
        ("Image encoder", f"torchvision `{m.get('backbone')}`, weights `{m.get('weights')}`, classifier removed"
         + (f"; first {frozen} stage(s) frozen" if frozen else "")),
        ("Projection head", f"Linear → {m.get('head_hidden')}{norm} → GELU → Linear → {m.get('embed_dim', 512)}, "
         "L2-normalized"),
        ("Text encoder", f"`{d.get('text_model')}` (CLIPTextModelWithProjection), frozen; captions embedded once "
         f"and cached (max {d.get('max_length')} tokens)"),
        ("Loss", f"symmetric InfoNCE, learnable temperature initialized at {m.get('temperature')} "
         f"(logit scale clamped at {m.get('max_logit_scale')})"),
        ("Optimizer", f"AdamW, lr {m.get('lr')} (head, temperature) / {m.get('backbone_lr')} (backbone), "
         f"weight decay {m.get('weight_decay')} on weight matrices only"),
        ("Schedule", f"linear warmup over {100 * m.get('warmup_fraction', 0):.0f} % of the steps, then cosine to 0"),
        ("Batch size, epochs", f"{d.get('batch_size')} image–caption pairs ({d.get('pairs')} mode), "
         f"{t.get('max_epochs')} epochs, seed {config.get('seed_everything')}"),
        ("Images", f"{d.get('image_size')} px crops of a {d.get('cache_image_size')} px cache; augmentation: "
         f"{augment_text}"),
        ("Data", f"`{d.get('data_root')}`: train on {d.get('train_split')}, validate on {d.get('val_images')} "
         f"images of {d.get('test_split')}, test on all of it"),
        ("Precision, compile", f"{t.get('precision') or (hw or {}).get('precision')}, "
         f"torch.compile {'on' if m.get('compile') else 'off'}"),
        ("Hardware", f"{hw['devices']} x {hw['device']} ({hw['cpu_cores']} CPU cores), torch {hw['torch']}"
         if hw else "not recorded (runs before run_stats.json existed)"),
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
        a["protocol"].get(k) == b["protocol"].get(k) for k in keys)


def test_results(result: dict[str, Any] | None, run: str, results_dir: str, tables: Path,
                 baselines: dict[str, Any] | None = None) -> str:
    if result is None:
        return missing(f"no test results for run `{run}`", commands(run, results_dir)["test"])
    m = result["metrics"]
    headers = ["metric", "standard protocol (%)", "first caption only (%)"]
    columns = [m, result.get("first_caption", {}).get("metrics")]
    if baselines and same_protocol(result, baselines):  # the reference row every reader looks for
        reference = baselines["variants"][baselines["base"]]["metrics"]
        headers.append(f"{baselines['base']} CLIP, standard (%)")
        columns.append({k: v["mean"] for k, v in reference.items()})
    rows = recall_rows(columns)
    write_text(tables / "test_recall.tex", latex_table(
        headers, rows, f"Test retrieval on {result['split']} ({m['n_images']} images, {m['n_captions']} captions)",
        "tab:test_recall"))
    uncaptioned = m["n_images"] - m.get("i2t_n", m["n_images"])
    note = (f" {uncaptioned} images have no caption: they are excluded from image → text (no ground truth) and stay "
            "in the gallery for text → image." if uncaptioned else "")
    protocol = result["protocol"]
    folds = protocol["folds"]
    size = f" in {folds} folds (metrics are the mean over folds)" if folds > 1 else ""
    warn = (f" **Not the published gallery** ({protocol.get('images'):,} images): not exactly comparable."
            if protocol.get("published_size") is False else "")
    return (f"Test split {result['split']} ({result.get('dataset', 'coco')}), protocol **{protocol['name']}**: "
            f"{protocol['description']}. Evaluated: {m['n_images']:,} images, {m['n_captions']:,} captions{size}; "
            f"checkpoint `{result.get('checkpoint')}`.{warn}{note}\n\n" + markdown_table(headers, rows) +
            "\n\nProtocols:\n\n- standard: " + protocol.get("rule", "") + "\n- "
            + result.get("first_caption", {}).get("protocol", "first caption only: not recorded"))


def baseline_results(result: dict[str, Any] | None, name: str, results_dir: str, tables: Path) -> str:
    if result is None:
        return missing(f"no reference baselines `{results_dir}/{name}.json`",
                       f"python -m clip_lab baselines -c configs/coco.yaml --name {name}")
    from clip_lab.baselines import markdown, table

    write_text(tables / "baselines.tex", latex_table(
        *table(result), f"Reference baselines on {result['split']} ({result['protocol']['name']}): test recall (%)",
        "tab:baselines"))
    return markdown(result)


def ablation_results(summary: dict[str, Any] | None, name: str, results_dir: str, tables: Path) -> str:
    if summary is None:
        return missing(f"no ablation sweep `{results_dir}/{name}.json`",
                       f"python -m clip_lab sweep -c configs/coco.yaml --seeds 3 --name {name}")
    from clip_lab.sweep import ablation_table

    headers, rows = ablation_table(summary["variants"], summary.get("order"))
    seeds = summary.get("seeds", [])
    write_text(tables / "ablations.tex", latex_table(
        headers, rows, f"Test recall (%) per variant, mean ± std over seeds {seeds}", "tab:ablations"))
    return (f"Test recall in % (standard protocol), mean ± std over seeds {seeds}. A difference is *beyond the seed "
            "spread* when it exceeds two standard errors of the difference of the means.\n\n"
            + markdown_table(headers, rows))


def training_time(run_dirs: list[tuple[str, Path]], tables: Path) -> str:
    headers = ("run", "hardware", "precision", "epochs", "fit time", "s / epoch", "train images/s")
    rows, absent = [], []
    for name, d in run_dirs:
        stats = read_json(d / "run_stats.json")
        if not stats or not stats.get("epochs"):
            absent.append(name)
            continue
        hw, epochs = stats["hardware"], stats["epochs"]
        rate = [e["train_images_per_s"] for e in epochs if e.get("train_images_per_s")]
        rows.append([name, f"{hw['devices']} x {hw['device']}", hw["precision"], len(epochs),
                     f"{stats['fit_seconds'] / 60:.1f} min", f"{sum(e['seconds'] for e in epochs) / len(epochs):.1f}",
                     f"{sum(rate) / len(rate):,.0f}" if rate else "–"])
    if not rows:
        return missing("no run_stats.json in any run (fit records it)", "python -m clip_lab fit ...")
    write_text(tables / "training_time.tex", latex_table(headers, rows, "Training time and hardware", "tab:time"))
    note = f"\n\nNot recorded for: {', '.join(absent)}." if absent else ""
    total = sum(read_json(d / "run_stats.json")["fit_seconds"] for n, d in run_dirs if n not in absent)
    return (markdown_table(headers, rows) + f"\n\nTotal training time over these runs: {total / 60:.1f} min. "
            "Images/s counts training only (validation excluded); time includes validation." + note)


def figures_block(manifest: dict[str, Any], report_dir: Path) -> str:
    parts = []
    for name, f in manifest.items():
        if "png" in f:
            rel = Path(os.path.relpath(f["png"], report_dir)).as_posix()  # links work wherever the folder goes
            parts.append(f"![{f.get('caption', name)}]({rel})\n\n*Figure ({name}): {f.get('caption', '')}*")
        else:
            parts.append(f"**{name}**\n\n" + missing(f.get("missing", "not produced"), f.get("command", "")))
    return "\n\n".join(parts) if parts else missing("no figures yet", "python -m clip_lab figures")


def appendix(config: dict[str, Any] | None, run: str, results_dir: str) -> str:
    if config is None:
        return missing(f"no run `{run}`", commands(run, results_dir)["fit"])
    text = yaml.safe_dump(config, sort_keys=False).strip()
    return (f"The resolved configuration of run `{run}` ({results_dir}/{run}/config.yaml):\n\n```yaml\n{text}\n```\n\n"
            f"Reproduce it with `python -m clip_lab fit -c {results_dir}/{run}/config.yaml --run {run}_again`, "
            f"then `{commands(run, results_dir)['test']}`.")


# -- the document: lab sections, generated blocks between markers, the student's text kept --------------------------
def begin(name: str) -> str:
    return f"<!-- BEGIN GENERATED: {name} (python -m clip_lab report rewrites this block; write outside it) -->"


def end(name: str) -> str:
    return f"<!-- END GENERATED: {name} -->"


def block(name: str, body: str) -> str:
    return f"{begin(name)}\n{body.strip()}\n{end(name)}"


def template(blocks: dict[str, str], run: str) -> str:
    """The first version of the report: the lab's sections, generated blocks, places for the student's text."""
    return "\n\n".join([
        f"# Fine-tuning CLIP: image–text retrieval on COCO 2014 (run `{run}`)",
        "## 1. Introduction", STUDENT,
        "## 2. Methodology", STUDENT, block("methodology", blocks["methodology"]),
        "## 3. Results", "### 3.1 Retrieval on the test split", block("test_results", blocks["test_results"]),
        "### 3.2 Reference baselines", block("baselines", blocks["baselines"]),
        "### 3.3 Ablations", block("ablations", blocks["ablations"]),
        "### 3.4 Training time and hardware", block("training_time", blocks["training_time"]),
        "### 3.5 Figures", block("figures", blocks["figures"]), STUDENT,
        "## 4. Discussion", STUDENT,
        "## 5. Conclusion", STUDENT,
        "## Appendix", block("appendix", blocks["appendix"]),
        "## Reflection on the use of LLMs", STUDENT,
    ]) + "\n"


def update(text: str, blocks: dict[str, str]) -> tuple[str, list[str]]:
    """`text` with each generated block's content replaced; the names of blocks the student removed (left out)."""
    gone = []
    for name, body in blocks.items():
        pattern = re.compile(r"<!-- BEGIN GENERATED: " + re.escape(name) + r"\b[^>]*-->.*?" + re.escape(end(name)),
                             re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _: block(name, body), text, count=1)
        else:
            gone.append(name)
    return text, gone


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m clip_lab report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="baseline", help="the run the report is about: results/<run>/")
    parser.add_argument("--ablations", default="ablations", help="the sweep: results/<name>.json and results/<name>/")
    parser.add_argument("--baselines", default="baselines", help="the reference baselines: results/<name>.json")
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--out", default="report/report.md")
    parser.add_argument("--no_figures", action="store_true", help="reuse report/figures/ instead of redrawing them")
    args = parser.parse_args(argv)

    report = Path(args.out)
    report_dir, results = report.parent, Path(args.results_dir)
    figures_dir, tables = report_dir / "figures", report_dir / "tables"
    if args.no_figures:
        manifest = read_json(figures_dir / "figures.json") or {}
    else:
        from clip_lab import figures

        manifest = figures.main(["--results_dir", args.results_dir, "--run", args.run, "--ablations", args.ablations,
                                 "--out", str(figures_dir)])
    run_dir = results / args.run
    config, stats = read_config(run_dir), read_json(run_dir / "run_stats.json")
    summary = read_json(results / f"{args.ablations}.json")
    baselines = read_json(results / f"{args.baselines}.json")
    variants = (summary or {}).get("variants", {})
    order = (summary or {}).get("order") or list(variants)
    sweep_runs = [(f"{v}/{Path(r).name}", Path(r)) for v in order for r in variants[v].get("runs", [])]
    blocks = {
        "methodology": methodology(config, stats, args.run, args.results_dir),
        "test_results": test_results(read_json(run_dir / "test_metrics.json"), args.run, args.results_dir, tables,
                                     baselines),
        "baselines": baseline_results(baselines, args.baselines, args.results_dir, tables),
        "ablations": ablation_results(summary, args.ablations, args.results_dir, tables),
        "training_time": training_time([(args.run, run_dir), *sweep_runs], tables),
        "figures": figures_block(manifest, report_dir),
        "appendix": appendix(config, args.run, args.results_dir),
    }
    if report.is_file():
        text, gone = update(report.read_text(), blocks)
        for name in gone:
            log.warning("report: %s has no generated block %r (removed, or new in this version of clip_lab); left "
                        "out: paste its BEGIN/END markers where it belongs, or delete the file to start over", report,
                        name)
    else:
        text, gone = template(blocks, args.run), []
    write_text(report, text)
    n_missing = sum("**Missing:**" in b for b in blocks.values())
    print(f"wrote {report} ({len(blocks) - len(gone)} generated blocks, {n_missing} with missing pieces) and "
          f"LaTeX tables in {tables}/")
    return {"report": str(report), "blocks": blocks, "missing": n_missing}
