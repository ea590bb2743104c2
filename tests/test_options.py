"""The option spellings: each old one reads as its new one with one warning per process, only where the new one is
an option of the parser; every job's parser and the LightningCLI take the new spellings."""

import logging

import pytest

from clip_lab import options
from clip_lab.jobs import bench
from clip_lab.options import RENAMED, JobParser, renamed

DEPRECATION = "{} is deprecated: use {} (the old spelling goes in the next release)"


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    monkeypatch.setattr(options, "_warned", set())  # no old spelling named yet


def warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_old_spellings_are_rewritten_where_the_new_one_is_known_and_named_once(caplog):
    known = {"--ckpt_path", "--run", "--no_compile"}
    with caplog.at_level(logging.WARNING, logger="clip_lab"):
        argv = renamed(["--ckpt", "a.ckpt", "--name=x", "--no-compile", "--k", "5"], known)
        again = renamed(["--ckpt", "b.ckpt"], known)
    assert argv == ["--ckpt_path", "a.ckpt", "--run=x", "--no_compile", "--k", "5"]
    assert again == ["--ckpt_path", "b.ckpt"]
    assert warnings(caplog) == [DEPRECATION.format(old, RENAMED[old]) for old in ("--ckpt", "--name", "--no-compile")]


def test_values_unknown_options_and_what_follows_a_double_dash_are_left_alone(caplog):
    with caplog.at_level(logging.WARNING, logger="clip_lab"):
        assert renamed(["--text", "--name", "--name", "v"], {"--text"}) == ["--text", "--name", "--name", "v"]
        assert renamed(["--run", "r", "--", "--name", "x"], {"--run"}) == ["--run", "r", "--", "--name", "x"]
        # a parser that has an option of the old name keeps it
        assert renamed(["--name", "x"], {"--name", "--run"}) == ["--name", "x"]
    assert warnings(caplog) == []


def test_a_job_parser_reads_old_spellings(caplog):
    parser = JobParser(prog="python -m clip_lab job")
    parser.add_argument("--run", default="ablations")
    parser.add_argument("--ckpt_path")
    with caplog.at_level(logging.WARNING, logger="clip_lab"):
        args = parser.parse_args(["--name", "mine", "--ckpt=best.ckpt"])
    assert (args.run, args.ckpt_path) == ("mine", "best.ckpt")
    assert warnings(caplog) == [DEPRECATION.format("--name", "--run"), DEPRECATION.format("--ckpt", "--ckpt_path")]


def test_bench_takes_no_compile_and_ckpt_path_and_still_reads_the_old_flags(caplog):
    new = bench.parse(["--small", "--no_compile", "--ckpt_path", "x.ckpt"])
    with caplog.at_level(logging.WARNING, logger="clip_lab"):
        old = bench.parse(["--small", "--no-compile", "--index_ckpt", "x.ckpt"])
    assert new.compile is False and old.compile is False and new.ckpt_path == old.ckpt_path == "x.ckpt"
    assert len(warnings(caplog)) == 2


def test_a_wrong_option_of_a_job_is_one_line_naming_the_closest_one(capsys):
    from clip_lab.__main__ import main

    assert main(["search", "--ckpt_path", "x.ckpt", "--text", "a cat", "--idnex", "hnsw"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unrecognized arguments: --idnex hnsw"), err
    assert "did you mean --index?" in err[0] and "python -m clip_lab search --help" in err[0]
    assert main(["embed", "--ckpt_path", "x.ckpt"]) == 2  # a required choice missing: one line too
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one of the arguments --split --images --texts is required" in err[0], err
