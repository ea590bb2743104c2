"""`python -m clip_lab`: --help (and no job at all) lists every job with one line each; an unknown job is one line."""

import pytest

from clip_lab.__main__ import JOBS, LIGHTNING_JOBS, describe, main


@pytest.mark.parametrize("argv, rc", [(["--help"], 0), (["-h"], 0), ([], 2)])
def test_help_lists_every_job_with_one_line_each(argv, rc, capsys):
    assert main(argv) == rc
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert list(lines) == [*LIGHTNING_JOBS, *JOBS]  # fit, validate, test, then demo, bench, sweep, ...
    for job, line in lines.items():
        text = line.removeprefix("  ").removeprefix(job).strip()
        assert len(text) > 20 and not text.startswith("`python -m") and len(line) <= 120, line
    assert out.startswith("usage: python -m clip_lab <job> [options]")


def test_job_descriptions_are_the_first_lines_of_their_docstrings():
    demo, search = describe(JOBS["demo"]), describe(JOBS["search"])
    assert demo == "generate a small COCO-format dataset, train on the CPU, test, recall beside chance"
    assert search == "the top-k images of a split for a text query, or its top-k captions for an image"


def test_fit_help_is_still_lightnings(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--trainer.max_epochs" in out and "--ckpt_path" in out and "--run RUN" in out


def test_an_unknown_job_is_one_line(capsys):
    assert main(["train"]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err == f"error: unknown job 'train': use one of {', '.join((*LIGHTNING_JOBS, *JOBS))}"
