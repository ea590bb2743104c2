"""The option spellings every job shares, and the old spellings still read (with one warning) for one release."""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections.abc import Collection, Sequence
from typing import Any, NoReturn

log = logging.getLogger(__name__)

# old spelling -> the one every job uses since 0.9; the old ones still work, with a warning, until the next release
RENAMED = {
    "--ckpt": "--ckpt_path",  # a checkpoint to read: LightningCLI's name (search, zeroshot and embed said --ckpt)
    "--index_ckpt": "--ckpt_path",  # bench's index part
    "--name": "--run",  # the folder a job writes its run into (sweep and baselines said --name)
    "--no-compile": "--no_compile",  # flags have underscores, like LightningCLI's options (bench said --no-compile)
}
_warned: set[str] = set()  # each old spelling is named once per process (a sweep parses many command lines)


def renamed(argv: Sequence[str], known: Collection[str]) -> list[str]:
    """`argv` with each old spelling in RENAMED replaced by its new one (`--old=value` too), where the parser knows
    the new spelling (in `known`) and not the old one. Everything after `--` is left alone: another parser reads it."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        old, eq, value = arg.partition("=")
        new = RENAMED.get(old)
        if new is None or new not in known or old in known:
            continue
        out[i] = new + eq + value
        if old not in _warned:
            _warned.add(old)
            log.warning("%s is deprecated: use %s (the old spelling goes in the next release)", old, new)
    return out


class JobParser(argparse.ArgumentParser):
    """argparse's parser for a job's options; reads the old spellings in RENAMED as the new ones, with a warning, and
    reports a wrong option as one line (`python -m clip_lab` prints it as `error: ...`), naming the closest option."""

    def error(self, message: str) -> NoReturn:
        from clip_lab.errors import ClipLabError

        hint = ""
        if message.startswith("unrecognized arguments:"):
            wrong = [a.partition("=")[0] for a in message.split(":", 1)[1].split() if a.startswith("--")]
            close = [difflib.get_close_matches(w, list(self._option_string_actions), n=1) for w in wrong]
            hint = "".join(f"; did you mean {c[0]}?" for c in close if c)
        raise ClipLabError(f"{message}{hint} ({self.prog} --help lists every option)")

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        args = sys.argv[1:] if args is None else args
        return super().parse_known_args(renamed(args, self._option_string_actions), namespace)
