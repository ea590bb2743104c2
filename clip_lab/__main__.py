"""`python -m clip_lab <job>`: fit / validate / test through LightningCLI; demo and bench as their own small jobs."""

from __future__ import annotations

import logging
import sys
from importlib import import_module

from clip_lab.errors import ClipLabError

JOBS = {"demo": "clip_lab.demo", "bench": "clip_lab.bench", "sweep": "clip_lab.sweep",
        "zeroshot": "clip_lab.zeroshot", "search": "clip_lab.search"}  # jobs beside LightningCLI's fit/validate/test, each a module with main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("clip_lab").addHandler(handler)
    logging.getLogger("clip_lab").setLevel(logging.INFO)
    try:
        if argv and argv[0] in JOBS:
            import_module(JOBS[argv[0]]).main(argv[1:])
        else:
            from clip_lab.cli import main as cli_main

            cli_main(argv)
    except ClipLabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
