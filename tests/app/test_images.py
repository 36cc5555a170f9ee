"""Reading pictures and normalising digits as MNIST's were made (npgrad.app.images)."""

import os
import struct
import sys
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import npgrad
from npgrad.app.images import image_paths, load_image, preprocess, recipe_for
from npgrad.data import digits, read_idx
from npgrad.errors import BlankImageError, ImageError

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def mnist(shared_data):
    d = shared_data / "mnist-10k"
    return (
        read_idx(d / "train-images-idx3-ubyte.gz"),
        read_idx(d / "train-labels-idx1-ubyte.gz"),
        read_idx(d / "t10k-images-idx3-ubyte.gz"),
        read_idx(d / "t10k-labels-idx1-ubyte.gz"),
    )


def corr(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def same_digit(a, b):
    """Correlation of two renderings, allowing the 1-pixel shift that placing a digit on whole
    pixels can make (MNIST's own centres of mass spread over [13.5, 14.5))."""
    return max(corr(np.roll(a, (dy, dx), axis=(0, 1)), b) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def upscale(digit, size):
    """A uint8 digit enlarged smoothly, as ink in [0, 1]."""
    img = Image.fromarray(np.asarray(digit, np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return np.asarray(img, np.float64) / 255


def transparent_drawing(digit, offset=(15, 55)):
    """Black ink on a transparent 280x280 canvas, off centre: all the ink is in alpha."""
    canvas = np.zeros((280, 280, 4), np.uint8)
    canvas[offset[0] : offset[0] + 200, offset[1] : offset[1] + 200, 3] = np.round(
        upscale(digit, 200) * 255
    )
    return canvas


def grey_photo(digit, rng, offset=(50, 20), contrast=0.28, noise=0.02, light=0.05):
    """Grey pencil on light, unevenly lit, noisy paper."""
    ink = np.zeros((280, 280))
    ink[offset[0] : offset[0] + 200, offset[1] : offset[1] + 200] = upscale(digit, 200)
    paper = 1 - light + light * np.linspace(0, 1, 280)[None, :] - (1 - contrast) / 4
    grey = paper - contrast * ink + rng.normal(0, noise, ink.shape)
    return np.round(np.clip(grey, 0, 1) * 255).astype(np.uint8)


def naive(picture):
    """The old predict: grey, resize the whole picture, invert if mostly light."""
    img = Image.fromarray(picture).convert("L").resize((28, 28), Image.Resampling.LANCZOS)
    a = np.asarray(img, np.float64) / 255
    return 1 - a if a.mean() > 0.5 else a


def save_png(path, array):
    Image.fromarray(array).save(path)
    return path


def png_header_only(path, width, height):
    """A valid PNG signature and IHDR declaring ``width`` x ``height``, and a token IDAT."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


# ----------------------------------------------------------------- MNIST's own digits


def test_clean_mnist_digits_come_out_nearly_unchanged(mnist):
    test = mnist[2][:300]
    out = [preprocess(a, (28, 28)) for a in test]
    worst = min(corr(a, b) for a, b in zip(test, out))
    assert worst > 0.9, worst
    assert all(b.shape == (28, 28) and b.dtype == np.float64 for b in out)
    assert all(0.0 <= b.min() and b.max() <= 1.0 for b in out)


def test_mnist_png_files_come_out_nearly_unchanged(mnist, tmp_path):
    for i, digit in enumerate(mnist[2][:10]):
        path = save_png(tmp_path / f"{i}.png", digit)
        assert corr(load_image(path, (28, 28), 255), digit) > 0.9


def test_digit_is_scaled_into_20x20_and_centred_by_mass(mnist):
    picture = np.zeros((300, 500), np.uint8)
    picture[20:120, 400:460] = np.round(upscale(mnist[2][0], 100)[:, 20:80] * 255)
    out = preprocess(picture, (28, 28))
    rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
    assert rows[-1] - rows[0] + 1 == 20 and cols[-1] - cols[0] + 1 <= 20
    com = [float(out.sum(axis=1 - k) @ np.arange(28) / out.sum()) for k in (0, 1)]
    assert all(13.5 <= c <= 14.5 for c in com), com


# ----------------------------------------------------------------- real pictures


def test_ink_in_the_alpha_channel_is_composited(mnist):
    digit = mnist[2][1]
    drawing = transparent_drawing(digit)
    assert drawing[..., :3].max() == 0  # as Pillow's convert("L") sees it: all black
    out = preprocess(drawing, (28, 28))
    assert same_digit(out, preprocess(digit, (28, 28))) > 0.9
    assert naive(drawing).max() == 0  # what the old pipeline gave the model


def test_white_ink_on_transparent_is_composited_over_black(mnist):
    drawing = transparent_drawing(mnist[2][2])
    drawing[..., :3] = 255
    assert same_digit(preprocess(drawing, (28, 28)), preprocess(mnist[2][2], (28, 28))) > 0.9


def test_dark_ink_on_light_paper_is_inverted(mnist):
    digit = mnist[2][3]
    assert corr(preprocess(255 - digit, (28, 28)), digit) > 0.9


def test_grey_low_contrast_photo_is_stretched(mnist):
    rng = np.random.default_rng(0)
    for digit in mnist[2][:10]:
        out = preprocess(grey_photo(digit, rng), (28, 28))
        crisp = preprocess(grey_photo(digit, rng, contrast=1, noise=0, light=0), (28, 28))
        assert out.max() == 1.0 and same_digit(out, crisp) > 0.9


def test_colour_photo_uses_luminance(mnist):
    digit = mnist[2][5]
    grey = grey_photo(digit, np.random.default_rng(1))
    rgb = np.stack([grey, grey, np.full_like(grey, 40)], axis=-1)  # yellowish paper, blue ink
    assert same_digit(preprocess(rgb, (28, 28)), preprocess(digit, (28, 28))) > 0.9


def test_sixteen_bit_png_and_float_arrays(mnist, tmp_path):
    digit = mnist[2][6]
    path = tmp_path / "deep.png"
    Image.fromarray(digit.astype(np.uint16) * 257).save(path)
    assert corr(load_image(path, (28, 28), 255), digit) > 0.9
    assert corr(preprocess(digit / 255.0, (28, 28)), digit) > 0.9


def test_exif_orientation_of_a_phone_photo_is_applied(mnist, tmp_path):
    digit = mnist[2][7]
    photo = grey_photo(digit, np.random.default_rng(2))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(np.rot90(photo)).save(tmp_path / "p.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "p.jpg", (28, 28), 255)
    assert same_digit(out, preprocess(digit, (28, 28))) > 0.9


# ----------------------------------------------------------------- the 8x8 digits set


def test_embedded_digits_fill_their_8x8_frame_nearly_unchanged():
    test = digits().test_images
    out = [preprocess(a, (8, 8)) for a in test[:100]]
    assert np.median([corr(a, b) for a, b in zip(test, out)]) > 0.999
    assert min(same_digit(a, b) for a, b in zip(test, out)) > 0.9


def test_a_drawing_for_an_8x8_model_fills_the_frame(mnist):
    assert recipe_for((8, 8), [str(i) for i in range(10)]) == "frame"
    out = preprocess(transparent_drawing(mnist[2][0]), (8, 8))
    assert out[0].any() and out[-1].any()  # eight rows tall, as every digit in the set
    assert not out[:, 0].any()  # a 7 is narrower: seven columns, from column 1 as in the set


def test_recipes():
    assert recipe_for((28, 28), [str(i) for i in range(10)]) == "mnist"
    assert recipe_for((28, 28), ["T-shirt/top"] + ["x"] * 9) == "frame"
    with pytest.raises(ImageError, match="unknown recipe"):
        preprocess(np.eye(10), (28, 28), recipe="emnist")


# ----------------------------------------------------------------- a model reads them


@pytest.fixture(scope="module")
def mnist_model(mnist):
    x = mnist[0].reshape(len(mnist[0]), -1).astype(np.float32) / 255
    y = mnist[1].astype(np.int64)
    net = npgrad.nn.MLP([784, 128, 10], rng=0)
    opt = npgrad.optim.Adam(net.parameters(), 1e-3)
    rng = np.random.default_rng(0)
    for _ in range(3):
        order = rng.permutation(len(x))
        for i in range(0, len(x), 64):
            b = order[i : i + 64]
            loss = npgrad.cross_entropy(net(npgrad.Tensor(x[b])), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()

    def predict(images):
        flat = np.asarray(images, np.float32).reshape(len(images), -1)
        return net(npgrad.Tensor(flat)).data.argmax(axis=1)

    return predict


N = 20


def test_the_model_reads_mnist(mnist, mnist_model):
    assert (mnist_model(mnist[2][:N] / 255.0) == mnist[3][:N]).sum() >= 18


def test_transparent_drawings_are_predicted(mnist, mnist_model, tmp_path):
    test, labels = mnist[2][:N], mnist[3][:N]
    paths = [save_png(tmp_path / f"{i}.png", transparent_drawing(d)) for i, d in enumerate(test)]
    ours = mnist_model([load_image(p, (28, 28), 255) for p in paths])
    old = mnist_model([naive(np.asarray(Image.open(p))) for p in paths])
    assert (ours == labels).sum() >= 18
    assert (old == labels).sum() <= 6  # all-black input: one class for everything


def test_grey_photos_are_predicted(mnist, mnist_model, tmp_path):
    rng = np.random.default_rng(3)
    test, labels = mnist[2][:N], mnist[3][:N]
    photos = [grey_photo(d, rng) for d in test]
    paths = [save_png(tmp_path / f"{i}.jpg", p) for i, p in enumerate(photos)]
    ours = mnist_model([load_image(p, (28, 28), 255) for p in paths])
    old = mnist_model([naive(p) for p in photos])
    assert (ours == labels).sum() >= 18
    assert (old == labels).sum() <= 12


# ----------------------------------------------------------------- refusals


def _npy(array):
    def write(path):
        with open(path, "wb") as f:  # np.save would append .npy to any other name
            np.save(f, array, allow_pickle=True)

    return write


def _bytes(data):
    return lambda path: path.write_bytes(data)


def _png(array):
    return lambda path: Image.fromarray(array).save(path, format="PNG")


def _huge_npy_header(path):
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f8", "fortran_order": False, "shape": (30000, 30000)}
        )


def _npy_with_header(text):
    """A .npy file of 28x28 float64 zeros whose header dict is ``text`` (found by fuzzing)."""
    header = text.ljust(117) + b"\n"
    return lambda path: path.write_bytes(
        b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + header + bytes(6272)
    )


def _truncated_npy(path):
    np.save(path, np.ones((40, 40)))
    path.write_bytes(path.read_bytes()[:-100])


nan_picture = np.zeros((40, 40))
nan_picture[5, 5] = np.nan
inf_input = np.zeros((28, 28))
inf_input[3, 3] = np.inf
noise = np.random.default_rng(0).normal(128, 6, (100, 100)).clip(0, 255).astype(np.uint8)
white = np.full((60, 60), 255, np.uint8)
clear = np.zeros((60, 60, 4), np.uint8)

REFUSALS = [
    ("empty.npy", _bytes(b""), ImageError, "empty file (0 bytes)"),
    ("empty.png", _bytes(b""), ImageError, "empty file (0 bytes)"),
    ("text.npy", _npy(np.array(["a", "b"])), ImageError, "not pixel numbers"),
    ("bytes.npy", _npy(np.array([b"ab"])), ImageError, "not pixel numbers"),
    ("object.npy", _npy(np.array([{"x": 1}], dtype=object)), ImageError, "Python objects"),
    ("complex.npy", _npy(np.ones((28, 28), complex)), ImageError, "not pixel numbers"),
    ("png.npy", _png(white), ImageError, "this is a PNG image, not what its name says: rename it to .png"),
    ("npy.png", _npy(np.ones((28, 28))), ImageError, "this is a NumPy .npy array"),
    ("text.png", _bytes(b"not an image"), ImageError, "not a readable image"),
    ("text.npy", _bytes(b"not an array"), ImageError, "not a NumPy array"),
    ("nan.npy", _npy(nan_picture), ImageError, "NaN or infinite"),
    ("inf.npy", _npy(inf_input), ImageError, "NaN or infinite"),
    ("negative.npy", _npy(-np.ones((28, 28))), ImageError, "negative pixel values"),
    ("big-values.npy", _npy(np.full((28, 28), 1e6)), ImageError, "pixel values up to 1e+06"),
    ("4d.npy", _npy(np.ones((2, 2, 2, 2))), ImageError, "not a picture"),
    ("5ch.npy", _npy(np.ones((9, 9, 5))), ImageError, "not a picture"),
    ("huge-header.npy", _huge_npy_header, ImageError, "too large to be a digit"),
    ("truncated.npy", _truncated_npy, ImageError, "truncated or damaged"),
    ("bytes-key.npy", _npy_with_header(b"{b'descr': '<f8', 'fortran_order': False, 'shape': (28, 28), }"),
     ImageError, "damaged .npy header (unreadable .npy header"),
    ("unclosed.npy", _npy_with_header(b"{'descr': '<f8', 'fortran_order': False, 'shape': ((28, 28), }"),
     ImageError, "damaged .npy header (unreadable .npy header"),
    ("huge.png", lambda p: png_header_only(p, 30000, 30000), ImageError, "too large to be a digit"),
    ("wide.png", lambda p: png_header_only(p, 5000, 10), ImageError, "5000x10 pixels is too large"),
    ("white.png", _png(white), BlankImageError, "blank, no digit found"),
    ("zeros.npy", _npy(np.zeros((40, 40))), BlankImageError, "blank, no digit found"),
    ("noise.png", _png(noise), BlankImageError, "no digit found"),
    ("transparent.png", _png(clear), BlankImageError, "fully transparent"),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, write, error, message", REFUSALS, ids=[f"{r[0]}:{r[3][:20]}" for r in REFUSALS]
)
def test_refusals_are_typed_and_one_line(tmp_path, name, write, error, message):
    path = tmp_path / name
    write(path)
    with pytest.raises(error) as info:
        load_image(path, (28, 28), 255)
    text = str(info.value)
    assert message in text and text.startswith(str(path))
    assert "\n" not in text and "allow_pickle" not in text


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such image file"):
        load_image(tmp_path / "none.png", (28, 28), 255)
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path, (28, 28), 255)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.png")  # opening it would wait for a writer forever
        with pytest.raises(ImageError, match="not a regular file"):
            load_image(tmp_path / "pipe.png", (28, 28), 255)


def test_without_pillow_pictures_say_what_to_install_and_npy_still_works(monkeypatch, tmp_path):
    save_png(tmp_path / "a.png", white)
    np.save(tmp_path / "a.npy", np.eye(28) * 255)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImageError, match=r"needs Pillow: pip install 'npgrad\[cli\]'"):
        load_image(tmp_path / "a.png", (28, 28), 255)
    assert load_image(tmp_path / "a.npy", (28, 28), 255).max() == 1.0


def test_npy_of_the_model_shape_is_taken_as_it_is(tmp_path):
    a = np.arange(64).reshape(8, 8) % 17
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "flat.npy", a.ravel().astype(np.uint8))
    np.save(tmp_path / "unit.npy", a / 16.0)
    for name in ("a.npy", "flat.npy", "unit.npy"):
        assert np.allclose(load_image(tmp_path / name, (8, 8), 16), a / 16.0)


def test_preprocess_refuses_non_pictures():
    with pytest.raises(ImageError, match="not a picture"):
        preprocess(np.ones(10), (28, 28))
    with pytest.raises(ImageError, match="not numbers"):
        preprocess(np.array([["a"]]), (28, 28))
    with pytest.raises(ImageError, match="not \\(height, width\\)"):
        preprocess(np.eye(10), (28,))
    with pytest.raises(BlankImageError):
        preprocess(np.full((30, 30), 7, np.uint8), (28, 28))


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        st.sampled_from([np.uint8, np.uint16, np.float64, np.int32]),
        st.tuples(st.integers(1, 40), st.integers(1, 40), st.sampled_from([0, 1, 2, 3, 4])).map(
            lambda s: s[:2] if s[2] == 0 else s
        ),
    ),
    st.sampled_from([(28, 28), (8, 8), (5, 13)]),
)
def test_any_array_gives_model_input_or_an_image_error(array, shape):
    try:
        out = preprocess(array, shape)
    except ImageError as exc:
        assert "\n" not in str(exc)
        return
    assert out.shape == shape and out.dtype == np.float64
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() == 1.0


def test_damaged_picture_files_give_image_errors_only(mnist, tmp_path):
    save_png(tmp_path / "ok.png", transparent_drawing(mnist[2][0]))
    Image.fromarray(grey_photo(mnist[2][1], np.random.default_rng(0))).save(tmp_path / "ok.jpg")
    np.save(tmp_path / "ok.npy", mnist[2][2])
    rng = np.random.default_rng(0)
    outcomes = {"read": 0, "refused": 0}
    for source in ("ok.png", "ok.jpg", "ok.npy"):
        data = (tmp_path / source).read_bytes()
        for i in range(60):
            b = bytearray(data)
            if i % 3 == 0:
                b = b[: rng.integers(1, len(b))]
            for _ in range(rng.integers(1, 4)):
                b[rng.integers(0, min(len(b), 200 if i % 2 else len(b)))] = rng.integers(0, 256)
            path = tmp_path / f"m{i}{source[-4:]}"
            path.write_bytes(bytes(b))
            try:
                load_image(path, (28, 28), 255)
                outcomes["read"] += 1
            except ImageError as exc:
                assert "\n" not in str(exc)
                outcomes["refused"] += 1
    assert outcomes["refused"] > 0


# ----------------------------------------------------------------- folders


def test_image_paths_expands_directories_sorted(tmp_path):
    d = tmp_path / "digits"
    d.mkdir()
    for name in ("b.png", "a.JPG", "c.npy", "notes.txt", "d.webp"):
        (d / name).write_bytes(b"x")
    (d / "sub.png").mkdir()
    other = tmp_path / "x.bin"
    other.write_bytes(b"x")
    found = image_paths([other, d])
    assert [p.name for p in found] == ["x.bin", "a.JPG", "b.png", "c.npy", "d.webp"]


def test_image_paths_refuses_a_directory_without_images_and_keeps_missing_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ImageError, match="no images in this directory"):
        image_paths([tmp_path])
    assert image_paths([tmp_path / "missing.png"]) == [tmp_path / "missing.png"]  # named on read
    with pytest.raises(ImageError, match="no such image file"):
        load_image(tmp_path / "missing.png", (28, 28))
