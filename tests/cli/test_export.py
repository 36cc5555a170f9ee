"""``npgrad export``: both formats written from a run, and every mistake one line with exit 2."""

import os
import stat
import sys

import numpy as np
import pytest

from npgrad.app.export import load_safetensors
from npgrad.cli import main
from tests.cli.helpers import assert_one_line_error, run_catching_exit


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    assert main(["train", "-d", "digits", "-e", "1", "-o", str(out), "-q"]) == 0
    return out


def export(capsys, *argv):
    return run_catching_exit(capsys, ["export", *map(str, argv)])


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_safetensors_from_the_suffix_or_the_option(capsys, run_dir, tmp_path):
    before = snapshot(run_dir)
    code, out, err = export(capsys, run_dir, tmp_path / "m.safetensors")
    assert code == 0 and err == ""
    net, meta = load_safetensors(tmp_path / "m.safetensors")
    hidden = net[0].out_features
    assert out.strip() == (
        f"wrote {tmp_path / 'm.safetensors'} (safetensors, PyTorch names): MLP 64-{hidden}-10, "
        f"{net.num_parameters():,} parameters; input (N, 64) float32 = pixels / 16; "
        "architecture in metadata"
    )
    assert meta["npgrad.input"]["image_shape"] == [8, 8]
    code, out, _ = export(
        capsys, run_dir / "checkpoint.npz", tmp_path / "m.bin", "--format", "safetensors"
    )
    assert code == 0
    assert (tmp_path / "m.bin").read_bytes() == (tmp_path / "m.safetensors").read_bytes()
    assert snapshot(run_dir) == before  # the run is only read


def test_onnx(capsys, run_dir, tmp_path):
    onnx = pytest.importorskip("onnx")
    code, out, err = export(capsys, run_dir, tmp_path / "m.onnx")
    assert code == 0 and err == "" and "(ONNX opset 17)" in out
    assert "outputs 'logits', 'probabilities'" in out
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(model)
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert weights["0.weight"].shape[0] == 64 and weights["0.weight"].dtype == np.float32


def test_mistakes_are_one_line_and_exit_2(capsys, run_dir, tmp_path, monkeypatch):
    code, _, err = export(capsys, tmp_path / "nowhere", tmp_path / "m.onnx")
    assert_one_line_error(code, err, "no such checkpoint file")
    code, _, err = export(capsys, run_dir, tmp_path / "m.pt")
    assert_one_line_error(code, err, "cannot tell the format from the name")
    code, _, err = export(capsys, run_dir, tmp_path / "m.pt", "--format", "pt")
    assert_one_line_error(code, err, "invalid choice: 'pt'")
    code, _, err = export(capsys, run_dir, tmp_path)
    assert_one_line_error(code, err, "is a directory")
    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint")
    code, _, err = export(capsys, tmp_path / "junk.npz", tmp_path / "m.safetensors")
    assert_one_line_error(code, err, "corrupt or not an npz checkpoint")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the export extra were not installed
    code, _, err = export(capsys, run_dir, tmp_path / "m.onnx")
    assert_one_line_error(code, err, "pip install 'npgrad[export]'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.npz"]  # nothing half-written


def test_help_shows_examples(capsys):
    code, out, _ = export(capsys, "--help")
    assert code == 0 and "npgrad export runs/digits-default digits.onnx" in out
    text = " ".join(out.split())
    assert "pixels / 255 for MNIST" in text and "pixels / 16 for the 8x8 digits" in text


def test_export_never_overwrites_its_checkpoint_or_a_data_file(capsys, run_dir, tmp_path):
    before = snapshot(run_dir)
    code, _, err = export(capsys, run_dir, run_dir / "checkpoint.npz", "--format", "safetensors")
    assert_one_line_error(code, err, "is the checkpoint being exported")
    idx = tmp_path / "train-labels-idx1-ubyte.gz"
    idx.write_bytes(b"\x1f\x8b" + b"data")
    code, _, err = export(capsys, run_dir, idx, "--format", "safetensors")
    assert_one_line_error(code, err, "already exists and is a gzip file, not an export")
    assert snapshot(run_dir) == before and idx.read_bytes() == b"\x1f\x8bdata"


def test_a_file_name_too_long_is_one_line(capsys, run_dir, tmp_path):
    code, _, err = export(capsys, run_dir, tmp_path / ("y" * 300 + ".onnx"))
    if "pip install" in err:
        pytest.skip("the onnx extra is not installed")
    # one message (wrapped, being long), exit 2, no traceback
    assert code == 2 and err.startswith("npgrad: error: ") and "Traceback" not in err
    assert "File name too long" in " ".join(err.split())


def test_export_never_replaces_what_is_not_a_regular_file(capsys, run_dir, tmp_path):
    # As root, replacing a device with the export would replace the system's /dev/null.
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    code, _, err = export(capsys, run_dir, fifo)
    assert_one_line_error(code, err, f"{fifo}: is a FIFO (named pipe)")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    link = tmp_path / "null.onnx"  # as /dev/stdout is a link
    link.symlink_to("/dev/null")
    code, _, err = export(capsys, run_dir, link)
    assert_one_line_error(code, err, f"{link}: is a symbolic link (to /dev/null)")
    assert link.is_symlink() and os.readlink(link) == "/dev/null"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null.onnx", "pipe.safetensors"]


def test_export_onto_a_copy_of_dev_null_leaves_the_device(capsys, run_dir, tmp_path):
    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, AttributeError):
        pytest.skip("making a device needs root (and CAP_MKNOD)")
    code, _, err = export(capsys, run_dir, null, "--format", "safetensors")
    assert_one_line_error(code, err, f"{null}: is a character device")
    assert stat.S_ISCHR(os.lstat(null).st_mode)
