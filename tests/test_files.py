"""Atomic writes: readers never see half a file, a failure leaves nothing behind, and the file gets the mode a plain
write would give it (the umask), so teammates can read results/ and report/ on a shared server."""

import os
import stat

import pytest

from clip_lab.files import atomic_path, save_json, save_text


@pytest.fixture
def umask():
    """Set the process umask for one test, and restore it after."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_leave_the_mode_a_plain_write_would(tmp_path, umask, mask, mode):
    umask(mask)
    save_json({"a": 1}, tmp_path / "out" / "x.json")
    save_text("hello\n", tmp_path / "out" / "x.md")
    with open(tmp_path / "plain.txt", "w") as f:  # what the user's own tools would make
        f.write("plain")
    for name in ("out/x.json", "out/x.md", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert (tmp_path / "out" / "x.md").read_text() == "hello\n"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]
