"""Atomic writes: a reader sees the old file or the new one, never half; modes follow the umask."""

import os

import pytest

from npgrad.fileio import atomic_path, atomic_write, write_bytes, write_text


def test_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    write_text(target, "old")
    write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]


def test_failure_keeps_the_old_file(tmp_path):
    target = write_bytes(tmp_path / "f.bin", b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half of the new")
            raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_keyboard_interrupt_keeps_the_old_file(tmp_path):
    target = write_bytes(tmp_path / "f.bin", b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_modes_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        a = write_text(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "b.png") as tmp:
            assert tmp.suffix == ".png"  # writers that pick a format by suffix still work
            tmp.write_bytes(b"png")
    finally:
        os.umask(old)
    assert a.stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.png").stat().st_mode & 0o777 == mode


def test_text_mode_is_utf8(tmp_path):
    write_text(tmp_path / "t.txt", "σ'(x) ⊙ dX")
    assert (tmp_path / "t.txt").read_bytes().decode("utf-8") == "σ'(x) ⊙ dX"


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_write(tmp_path / "x", "a"):
            pass
