"""Command lines of the CLI that the tests run: one run's folders and data, a `fit` on the demo configs, a job on a
fitted run's own config. Options are keywords, `data__batch_size=32` (or `**{"data.batch_size": 32}`) for
`--data.batch_size 32`; one that a default also sets replaces the default in place."""

from pathlib import Path

from clip_lab.files import CONFIGS

TINY_IMAGES = {"data.image_size": 32, "data.cache_image_size": 40}  # small images keep a fit on written files fast


def _dotted(options: dict) -> dict:
    return {key.replace("__", "."): value for key, value in options.items()}


def flags(**options) -> list[str]:
    """`--key value` for each option, in order; values as `str` gives them."""
    return [a for key, value in _dotted(options).items() for a in (f"--{key}", str(value))]


def data_options(root: Path, tmp_path: Path) -> dict:
    """The data at `root` (with the tiny CLIP that make_demo_dataset writes beside it) and caches under `tmp_path`."""
    return {
        "data.data_root": root,
        "data.text_model": root / "clip_tiny",
        "data.cache_dir": tmp_path / "cache",
        "data.num_workers": 0,
    }


def run_args(root: Path, tmp_path: Path, run: str = "t", /, **options) -> list[str]:
    """Flags pointing run `run` at the data at `root` and at its own folders under `tmp_path`, then `options`."""
    return flags(
        **{"run": run, "results_dir": tmp_path / "results", **data_options(root, tmp_path), **_dotted(options)}
    )


def fit_args(root: Path, tmp_path: Path, run: str = "t", /, *overlays: str, **options) -> list[str]:
    """`fit` on configs/coco.yaml, configs/demo.yaml and `overlays` (paths under configs/), then `run_args`."""
    configs = [a for name in ("coco.yaml", "demo.yaml", *overlays) for a in ("-c", str(CONFIGS / name))]
    return ["fit", *configs, *run_args(root, tmp_path, run, **options)]


def job_args(job: str, run: Path, ckpt: str | None = None, /, **options) -> list[str]:
    """`job` on the fitted run folder's config.yaml, from its checkpoints/`ckpt` when given, then `options`."""
    checkpoint = ["--ckpt_path", str(run / "checkpoints" / ckpt)] if ckpt else []
    return [job, "-c", str(run / "config.yaml"), *checkpoint, *flags(**options)]


def ckpt_of(run: Path) -> str:
    """The run folder's best checkpoint."""
    return str(run / "checkpoints" / "best.ckpt")
