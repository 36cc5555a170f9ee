"""``npgrad predict``: folders of pictures, and every user mistake as one line with exit 2."""

import json
import subprocess
import sys

import numpy as np
import pytest

from npgrad.app import checkpoint as ckpt
from npgrad.cli import main
from npgrad.data import digits
from tests.app.test_images import png_header_only

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    assert (
        main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    )
    return out


def predict(capsys, *argv):
    try:
        code = main(["predict", *map(str, argv)])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def dark_on_light(image, size=64):
    """An 8x8 digit as a user would draw it: dark ink on white paper, enlarged."""
    pixels = (255 - image * 15).astype(np.uint8)
    return Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)


def test_a_folder_is_every_image_in_it_sorted(capsys, run_dir, tmp_path):
    ds = digits()
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(3):
        dark_on_light(ds.test_images[i]).save(folder / f"{i}.png")
    np.save(folder / "3.npy", ds.test_images[3])
    (folder / "notes.txt").write_text("not a picture: skipped")
    code, out, err = predict(capsys, run_dir, folder, "--json")
    assert code == 0 and err == ""
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in results] == [
        str(folder / n) for n in ("0.png", "1.png", "2.png", "3.npy")
    ]
    for r in results:
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-6
    # an array of the model's shape is the model's input as it is: scaled by pixel_max only
    from npgrad.app.models import load_for_inference

    model, meta = load_for_inference(run_dir)
    x = (ds.test_images[3] / meta["pixel_max"]).reshape(1, -1).astype(meta["config"]["dtype"])
    expected = np.exp(model.log_probs(x)[0])
    got = np.array([results[3]["probabilities"][c] for c in meta["classes"]])
    assert np.allclose(got, expected / expected.sum(), atol=1e-6)


def test_top_larger_than_the_classes_is_clamped(capsys, run_dir, tmp_path):
    np.save(tmp_path / "a.npy", digits().test_images[0])
    code, out, _ = predict(capsys, run_dir, tmp_path / "a.npy", "--top", "50")
    assert code == 0 and out.count("%") == 10


def test_numpy_warnings_never_reach_the_terminal(run_dir, tmp_path):
    params, optim, meta = ckpt.load(run_dir)
    ckpt.save(tmp_path / "checkpoint.npz", {k: v * np.float32(1e30) for k, v in params.items()},
              optim, meta)  # fmt: skip
    np.save(tmp_path / "a.npy", digits().test_images[0])
    proc = subprocess.run(
        [sys.executable, "-m", "npgrad", "predict", str(tmp_path), str(tmp_path / "a.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "non-finite probabilities" in proc.stderr, proc.stderr


def _png_as_npy(path):
    Image.new("L", (20, 20), 255).save(path, format="PNG")


def _empty_dir(path):
    path.mkdir()
    (path / "readme.txt").write_text("no pictures here")


MISTAKES = [
    ("top 0", "a.npy", ["--top", "0"], "--top must be 1 or more, got 0"),
    ("top negative", "a.npy", ["--top", "-3"], "--top must be 1 or more, got -3"),
    ("png renamed npy", "png.npy", [], "this is a PNG image, not what its name says: rename it to .png"),
    ("zero-byte npy", "empty.npy", [], "empty file (0 bytes)"),
    ("folder without images", "empty-dir", [], "no images in this directory"),
    ("huge png", "huge.png", [], "too large to be a digit"),
    ("wide png", "wide.png", [], "5000x20 pixels is too large to be a digit"),
    ("blank picture", "white.png", [], "blank, no digit found"),
    ("missing file", "none.png", [], "no such image file"),
    ("string npy", "text.npy", [], "not pixel numbers"),
    ("garbage png", "x.png", [], "not a readable image"),
    ("nan npy", "nan.npy", [], "contains NaN or infinite pixel values"),
]  # fmt: skip


@pytest.mark.parametrize("name, image, extra, message", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistakes_are_one_line_exit_2_and_change_nothing(capsys, run_dir, tmp_path, name, image, extra, message):  # fmt: skip
    np.save(tmp_path / "a.npy", digits().test_images[0])
    _png_as_npy(tmp_path / "png.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    _empty_dir(tmp_path / "empty-dir")
    png_header_only(tmp_path / "huge.png", 30000, 30000)
    png_header_only(tmp_path / "wide.png", 5000, 20)
    Image.new("L", (50, 50), 255).save(tmp_path / "white.png")
    np.save(tmp_path / "text.npy", np.array(["seven"]))
    (tmp_path / "x.png").write_text("not an image")
    np.save(tmp_path / "nan.npy", np.where(np.eye(8) > 0, np.nan, 0.0))
    before = snapshot(run_dir)
    code, out, err = predict(capsys, run_dir, tmp_path / image, *extra)
    assert code == 2 and out == ""
    assert err.startswith("npgrad: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err and "allow_pickle" not in err
    assert snapshot(run_dir) == before


def test_bad_pictures_in_a_folder_are_named_and_the_others_still_answered(
    capsys, run_dir, tmp_path
):
    for name in ("a.png", "c.png"):
        dark_on_light(digits().test_images[0]).save(tmp_path / name)
    (tmp_path / "b.npy").write_bytes(b"")
    Image.new("L", (50, 50), 255).save(tmp_path / "d.png")  # blank
    code, out, err = predict(capsys, run_dir, tmp_path / "a.png", tmp_path / "gone.png", "--json")
    assert code == 2 and json.loads(out)["image"] == str(tmp_path / "a.png")
    assert "gone.png: no such image file" in err and err.count("\n") == 1
    code, out, err = predict(capsys, run_dir, tmp_path, "--json")
    assert code == 2
    assert [json.loads(line)["image"] for line in out.splitlines()] == [
        str(tmp_path / "a.png"),
        str(tmp_path / "c.png"),
    ]
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith("npgrad: error: ") for line in lines)
    assert f"{tmp_path / 'b.npy'}: empty file" in lines[0] and "blank" in lines[1]


def test_a_picture_of_another_size_is_said_to_be_scaled(capsys, run_dir, tmp_path):
    # A 28x28 MNIST-sized picture given to the 8x8 digits model: answered, and said so.
    big = np.zeros((28, 36), np.uint8)  # 36 wide, 28 high
    big[4:24, 16:20] = 255  # a one
    Image.fromarray(big).save(tmp_path / "mnist-sized.png")
    np.save(tmp_path / "model-sized.npy", digits().test_images[0])
    code, out, err = predict(capsys, run_dir, tmp_path / "mnist-sized.png",
                             tmp_path / "model-sized.npy")  # fmt: skip
    lines = out.splitlines()
    assert code == 0 and err == "" and len(lines) == 2
    assert lines[0].endswith("[a 36x28 picture, scaled to 8x8 as the model takes it]")
    assert "scaled" not in lines[1]
    code, out, _ = predict(capsys, run_dir, tmp_path / "mnist-sized.png", "--json")
    assert code == 0 and json.loads(out)["scaled_from"] == [28, 36]  # (height, width)
