"""Atomic writes: a reader sees the old file or the new one, never half; modes follow the umask;
only new paths and regular files are replaced (never a device, a FIFO or a symbolic link)."""

import os
import stat

import pytest

from npgrad.errors import NotARegularFile, NpgradError
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


# --------------------------------------------------------------------------- what is replaced


def assert_refused(target, kind):
    """Every way npgrad writes refuses ``target``, and leaves no temporary file beside it."""
    before = sorted(p.name for p in target.parent.iterdir())
    writers = [
        lambda: write_bytes(target, b"new"),
        lambda: write_text(target, "new"),
        lambda: atomic_write(target).__enter__(),
        lambda: atomic_path(target).__enter__(),
    ]
    for write in writers:
        with pytest.raises(NotARegularFile) as info:
            write()
        message = str(info.value)
        assert message.startswith(f"{target}: is {kind}") and "\n" not in message
    assert sorted(p.name for p in target.parent.iterdir()) == before


def test_a_fifo_is_refused_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    assert_refused(fifo, "a FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_copy_of_dev_null_is_refused_and_stays_a_device(tmp_path):
    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, AttributeError):
        pytest.skip("making a device needs root (and CAP_MKNOD)")
    assert_refused(null, "a character device")
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_symbolic_links_are_refused_and_kept(tmp_path):
    # /dev/stdout and /dev/null reached through a link; a link to a regular file is refused too
    (tmp_path / "real.txt").write_text("old")
    for name, target in [("null", "/dev/null"), ("file", "real.txt"), ("gone", "missing.txt")]:
        link = tmp_path / name
        link.symlink_to(target)
        assert_refused(link, f"a symbolic link (to {target})")
        assert link.is_symlink() and os.readlink(link) == target
    assert (tmp_path / "real.txt").read_text() == "old"
    assert not (tmp_path / "missing.txt").exists()


def test_a_directory_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    assert_refused(tmp_path / "d", "a directory")


def test_a_fifo_made_while_writing_is_not_replaced(tmp_path):
    target = tmp_path / "f.bin"
    with pytest.raises(NotARegularFile):
        with atomic_write(target) as f:
            f.write(b"new")
            os.mkfifo(target)  # appeared between the first check and the replacement
    assert stat.S_ISFIFO(os.lstat(target).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_not_a_regular_file_is_a_user_error_not_an_os_error():
    # an OSError would be caught by a download and retried on the next mirror
    assert issubclass(NotARegularFile, NpgradError) and not issubclass(NotARegularFile, OSError)
