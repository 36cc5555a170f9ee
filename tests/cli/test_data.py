"""``npgrad data``: list and fetch, against a local mirror server only; one-line errors."""

import subprocess
import sys

import pytest

from npgrad.data import datasets
from tests.cli.helpers import assert_one_line_error, run, run_catching_exit
from tests.data.helpers import (  # noqa: F401  (fixtures)
    mirror,
    short_tmp,
    spec_10k,
    unprivileged,
    write_dataset,
)


def test_data_list(capsys, shared_data):
    code, out, _ = run(capsys, "data", "list", "--data-dir", str(shared_data))
    assert code == 0
    assert "digits" in out and "embedded" in out
    assert "mnist" in out and "not found" in out


def test_data_fetch_from_local_mirror(capsys, mirror, monkeypatch, tmp_path, shared_data):  # noqa: F811
    base, _ = mirror
    monkeypatch.setitem(datasets.DATASETS, "mnist10k", spec_10k(shared_data))
    monkeypatch.setenv("NPGRAD_DATA", str(tmp_path))
    code, out, _ = run(capsys, "data", "fetch", "mnist10k", "--mirror",
                       f"{base}/missing/mnist-10k", "--mirror", f"{base}/good/mnist-10k")  # fmt: skip
    assert code == 0 and "mnist10k: verified files in" in out
    assert (tmp_path / "mnist10k" / "train-images-idx3-ubyte.gz").is_file()


def test_data_fetch_offline_is_one_line(capsys):
    code, _, err = run(capsys, "data", "fetch", "mnist")
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "npgrad: error: could not download train-images-idx3-ubyte.gz: 127.0.0.1:9 failed "
        "(Connection refused)"
    ]


def test_train_offline_is_one_line(capsys, tmp_path):
    code, out, err = run(capsys, "train", "-o", str(tmp_path / "run"))
    assert code == 2 and out == "" and not (tmp_path / "run").exists()
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("npgrad: error: mnist is not on this machine and every mirror failed")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "fetch", "cifar"], "'cifar' cannot be downloaded: known are mnist, fashion-mnist"),
        (["data", "fetch", "digits"], "'digits' cannot be downloaded (it is embedded in npgrad"),
        (["data", "fetch", "mnist", "--cache", "{tmp}/file.txt/sub"],
         "cannot write to {tmp}/file.txt/sub (Not a directory): choose a writable directory "
         "with --cache DIR or $NPGRAD_DATA"),
        (["data", "fetch"], "the following arguments are required: name"),
        (["data", "pull"], "invalid choice: 'pull'"),
    ],
)  # fmt: skip
def test_data_errors_are_one_line(capsys, short_tmp, argv, message):  # noqa: F811
    (short_tmp / "file.txt").write_text("not a directory")
    argv = [a.replace("{tmp}", str(short_tmp)) for a in argv]
    code, _, err = run_catching_exit(capsys, argv)
    assert_one_line_error(code, err, message.replace("{tmp}", str(short_tmp)))


def test_read_only_cache_is_one_line(unprivileged, short_tmp):  # noqa: F811
    cache = short_tmp / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    proc = subprocess.run([*unprivileged, sys.executable, "-m", "npgrad", "data", "fetch", "mnist",
                           "--cache", str(cache)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert_one_line_error(proc.returncode, proc.stderr,
                          f"npgrad: error: cannot write to {cache} (Permission denied): "
                          "choose a writable directory with --cache DIR or $NPGRAD_DATA")  # fmt: skip


def test_unreadable_data_dir_is_listed_as_such(unprivileged, tmp_path):  # noqa: F811
    locked = write_dataset(tmp_path / "locked")
    locked.chmod(0o000)
    try:
        proc = subprocess.run([*unprivileged, sys.executable, "-m", "npgrad", "data", "list",
                               "--data-dir", str(locked)], capture_output=True, text=True,
                              timeout=60)  # fmt: skip
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"data dir {locked}: cannot be read (Permission denied)" in proc.stdout
