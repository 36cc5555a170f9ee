"""Pictures in, model input out: image files read safely and digits normalised as MNIST's were.

MNIST's digits were made from NIST's binary scans: each digit was scaled to fit
a 20x20 box, its aspect ratio preserved (the anti-aliasing gives the grey
levels), and placed in a 28x28 frame with its centre of mass at the centre.
A network trained on them expects exactly that, so a user's picture (a drawing
exported with a transparent background, a grey phone photo of a digit on
paper) goes through the same steps in :func:`preprocess`:

1. grey: colour to luminance (ITU-R 601, as Pillow's ``L``); a transparent
   background is composited over the colour the ink is not, so ink stored only
   in the alpha channel stays visible;
2. polarity: the ink is on the side of the histogram farther from the
   background (the border's median), and ends up light on dark;
3. contrast: background to 0, the brightest ink to 1, the border's noise floor
   removed;
4. foreground: the bounding box of the ink pixels that touch other ink
   pixels (an isolated speck of noise does not stretch the box);
5. crop, scale (anti-aliased) and place, by one of two recipes:

   * ``"mnist"`` (28x28 digit models): into a 20x20 box, then shifted so the
     centre of mass is at (14, 14), where it lies in MNIST (measured on its
     test set: 13.99, 14.01);
   * ``"frame"`` (every other shape, and 28x28 models whose classes are not
     the ten digits): the longest side fills the frame, centred by the bounding
     box. This is how the 8x8 ``digits`` set was made (32x32 bitmaps
     normalised to the frame, then 4x4 blocks counted, 0..16: every digit is 8
     rows tall, about 6 columns wide, centred) and how Fashion-MNIST was
     (trimmed, longest edge resized to 28, centred).

The core is NumPy only; Pillow (the ``cli`` extra) is imported when a PNG/JPEG
is read. ``.npy`` arrays need no Pillow: one with exactly the model's input
shape (or its flat length) is taken as it is, like a row of the training set;
any other is a picture and is preprocessed. Everything a user can get wrong is
an :class:`~npgrad.errors.ImageError` saying what to do.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import BlankImageError, ImageError
from .checkpoint import npy_header

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".npy")
MAX_SIDE = 4096  # a digit needs no more; caps a picture at 16.8M pixels before it is decoded
WORK_SIDE = 1024  # larger pictures are box-averaged down to this first: same digit, less memory
MIN_CONTRAST = 0.05  # ink must differ from the background by 5% of the full scale (13 of 255)
INK = 0.35  # stretched level above which a pixel counts as ink for the bounding box
RECIPES = ("mnist", "frame")
DIGITS = tuple(str(i) for i in range(10))

# First bytes of the formats a user may confuse with each other.
_MAGIC = (
    (b"\x93NUMPY", "a NumPy .npy array", ".npy"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image", ".png"),
    (b"\xff\xd8\xff", "a JPEG image", ".jpg"),
    (b"GIF8", "a GIF image", ".gif"),
    (b"BM", "a BMP image", ".bmp"),
    (b"PK\x03\x04", "a zip archive (.npz?)", ".npz"),
)


def image_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The image files named by ``paths``, each directory replaced by its images (sorted).

    A path that does not exist is kept: reading it names it, beside the others' answers.
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            try:
                found = sorted(
                    q for q in p.iterdir() if q.suffix.lower() in SUFFIXES and q.is_file()
                )
            except OSError as exc:
                raise ImageError(f"{p}: cannot list this directory ({exc.strerror})") from None
            if not found:
                raise ImageError(
                    f"{p}: no images in this directory (looked for {', '.join(SUFFIXES)})"
                )
            out.extend(found)
        else:
            out.append(p)
    return out


def recipe_for(shape: tuple[int, ...], classes: Iterable[str]) -> str:
    """``"mnist"`` for a 28x28 model of the ten digits, ``"frame"`` otherwise (see the module)."""
    return "mnist" if tuple(shape) == (28, 28) and tuple(classes) == DIGITS else "frame"


def load_image(
    path: str | os.PathLike,
    shape: tuple[int, int],
    pixel_max: float = 255.0,
    recipe: str | None = None,
) -> np.ndarray:
    """An image file as float64 in [0, 1] of ``shape``, light digit on dark, ready for a model.

    ``pixel_max`` is the training set's full scale (255 for MNIST, 16 for ``digits``):
    integer ``.npy`` arrays of the model's shape are divided by it.
    """
    return load_picture(path, shape, pixel_max, recipe)[0]


def load_picture(
    path: str | os.PathLike,
    shape: tuple[int, int],
    pixel_max: float = 255.0,
    recipe: str | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_image` and the (height, width) the picture had in its file.

    A caller can then say when a picture was scaled to a model of another size (a
    28x28 MNIST digit given to the 8x8 digits model) instead of answering silently.
    """
    p = Path(path)
    if p.is_dir():
        raise ImageError(f"{p}: is a directory; give an image file (predict expands directories)")
    if not p.exists():
        raise ImageError(f"{p}: no such image file")
    if not p.is_file():  # a pipe or a device would block or never end
        raise ImageError(f"{p}: not a regular file; give an image file")
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise ImageError(f"{p}: cannot read this file ({exc.strerror})") from None
    if not head:
        raise ImageError(f"{p}: empty file (0 bytes); give a PNG/JPEG picture or a .npy array")
    kind = next(((what, ext) for magic, what, ext in _MAGIC if head.startswith(magic)), None)
    is_npy = p.suffix.lower() == ".npy"
    if is_npy != (kind is not None and kind[1] == ".npy"):
        if kind is None:
            raise ImageError(f"{p}: not a NumPy array (no .npy header); save it with numpy.save")
        raise ImageError(f"{p}: this is {kind[0]}, not what its name says: rename it to {kind[1]}")
    if is_npy:
        a = _read_npy(p)
        if a.shape == tuple(shape) or (a.ndim == 1 and a.size == math.prod(shape)):
            return _as_model_input(p, a, shape, pixel_max), (shape[0], shape[1])
        return preprocess(a, shape, recipe, name=str(p)), (a.shape[0], a.shape[1])
    pixels, size = _read_picture(p)
    return preprocess(pixels, shape, recipe, name=str(p)), size


def preprocess(
    array: np.ndarray, shape: tuple[int, int], recipe: str | None = None, name: str = "image"
) -> np.ndarray:
    """A picture of one digit, (H, W) grey or (H, W, C) with C = 1..4, as float64 model input.

    Values may be integers (uint8, uint16) or floats in [0, 1] or [0, 255]; any
    polarity. Returns ``shape`` in [0, 1], light on dark, normalised as the
    module describes. ``recipe`` defaults to ``"mnist"`` for 28x28, else ``"frame"``.
    """
    shape = _check_shape(shape)
    recipe = recipe or ("mnist" if shape == (28, 28) else "frame")
    if recipe not in RECIPES:
        raise ImageError(f"unknown recipe {recipe!r}: use {' or '.join(RECIPES)}")
    a = np.asarray(array)
    if a.dtype.kind not in "biuf":
        raise ImageError(f"{name}: pixels of type {a.dtype} are not numbers")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] > 4) or 0 in a.shape:
        raise ImageError(
            f"{name}: array of shape {a.shape} is not a picture; use (height, width) grey "
            "or (height, width, channels) with 1 to 4 channels"
        )
    _check_size(name, a.shape[0], a.shape[1])
    if not np.isfinite(a).all():
        raise ImageError(f"{name}: contains NaN or infinite pixel values")
    grey = _grey(_unit_scale(a), name)
    grey = _shrink(grey, math.ceil(max(grey.shape) / WORK_SIDE))
    ink, noise = _ink(grey, name)
    box = _foreground(ink, noise, name)
    crop = ink[box]
    if recipe == "mnist":
        fit = tuple(round(s * 20 / 28) for s in shape)
    else:
        fit = shape
    scale = min(fit[0] / crop.shape[0], fit[1] / crop.shape[1])
    size = (max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale)))
    digit = _resample(crop, size)
    if digit.max() <= 0:  # a lone pixel exactly between two output pixels
        raise BlankImageError(
            f"{name}: blank, no digit found (only specks); give a picture of a digit"
        )
    digit /= digit.max()
    return _place(digit, shape, centre_of_mass=recipe == "mnist")


# ----------------------------------------------------------------- reading files


def _check_shape(shape: Iterable[int]) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ImageError(f"model input shape {shape} is not (height, width)")
    return shape


def _check_size(name: str, height: int, width: int) -> None:
    if max(height, width) > MAX_SIDE:
        raise ImageError(
            f"{name}: {width}x{height} pixels is too large to be a digit; crop it to the "
            f"digit or shrink it to at most {MAX_SIDE}x{MAX_SIDE}"
        )


def _read_npy(p: Path) -> np.ndarray:
    """A .npy array, its header checked before any data is read: no pickle, no huge allocation."""
    try:
        with open(p, "rb") as f:
            shape, fortran, dtype = npy_header(f)
            if dtype.hasobject:
                raise ImageError(
                    f"{p}: holds Python objects, which npgrad never unpickles; save numbers "
                    "with numpy.save(path, numpy.asarray(pixels, dtype=float))"
                )
            if dtype.kind not in "biuf":
                raise ImageError(
                    f"{p}: holds {dtype} values, not pixel numbers; save a numeric array"
                )
            if len(shape) >= 2:
                _check_size(str(p), shape[0], shape[1])
            count = math.prod(shape)
            if len(shape) > 3 or count > MAX_SIDE * MAX_SIDE * 4:
                raise ImageError(f"{p}: array of shape {shape} is not a picture of a digit")
            data = f.read(count * dtype.itemsize + 1)
    except ImageError:
        raise
    except (ValueError, EOFError) as exc:
        raise ImageError(
            f"{p}: damaged .npy header ({exc}); save it again with numpy.save"
        ) from None
    except OSError as exc:
        raise ImageError(f"{p}: cannot read this file ({exc.strerror})") from None
    if len(data) != count * dtype.itemsize:
        raise ImageError(
            f"{p}: holds {len(data)} bytes of data where its header promises "
            f"{count * dtype.itemsize} (truncated or damaged); save it again"
        )
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def _as_model_input(p: Path, a: np.ndarray, shape: tuple[int, int], pixel_max: float) -> np.ndarray:
    """An array already in the model's format: only scaled, like the training set."""
    raw = a
    a = a.reshape(shape).astype(np.float64)
    if not np.isfinite(a).all():
        raise ImageError(f"{p}: contains NaN or infinite pixel values")
    top = float(a.max())
    if a.min() < 0:
        raise ImageError(f"{p}: negative pixel values; give 0 (background) to {pixel_max:g} (ink)")
    if raw.dtype.kind in "iu" or top > 1.0:
        # integer pixels count 0..pixel_max as in training (0..255 if larger)
        a /= pixel_max if top <= pixel_max else 255.0
    if a.max() > 1.0:
        raise ImageError(f"{p}: pixel values up to {top:g}; give 0..{pixel_max:g} or 0..255")
    return a


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImageError(
            "reading PNG/JPEG pictures needs Pillow: pip install 'npgrad[cli]' (or use .npy arrays)"
        ) from None
    return Image


def _read_picture(p: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Grey (H, W) or RGBA (H, W, 4) pixels of a picture file (perhaps box-reduced), and its
    (height, width) in the file; the size checked before decoding."""
    Image = _pillow()
    from PIL import ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning: our own limit is lower
        try:
            img = Image.open(p)
        except Image.DecompressionBombError:
            raise ImageError(
                f"{p}: too large to be a digit; crop it to the digit or shrink it to at most "
                f"{MAX_SIDE}x{MAX_SIDE}"
            ) from None
        except Exception as exc:  # Pillow's plugins raise many types on bad bytes
            raise ImageError(f"{p}: not a readable image ({_reason(exc)})") from None
        with img:
            _check_size(str(p), img.height, img.width)
            try:
                img = ImageOps.exif_transpose(img)  # phone photos are stored sideways
                size = (img.height, img.width)  # as the user sees it, upright
                deep = img.mode.startswith("I") or img.mode == "F"
                img = img.convert("F" if deep else "RGBA")
                factor = math.ceil(max(img.size) / WORK_SIDE)
                if factor > 1:  # box average while still 8 bits: the same digit, less memory
                    img = img.reduce(factor)
                if not deep:
                    return np.asarray(img), size
                a = np.asarray(img, dtype=np.float64)
                return a / (65535.0 if a.max() > 255 else 255.0), size
            except Exception as exc:  # as above: damaged data inside the file
                raise ImageError(f"{p}: not a readable image ({_reason(exc)})") from None


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) < 80 else text[:77] + "..."


# ----------------------------------------------------------------- the pipeline


def _unit_scale(a: np.ndarray) -> np.ndarray:
    """Pixels as float64 on the scale 0..1 their type implies (uint8 255, uint16 65535...)."""
    if a.dtype == np.bool_:
        return a.astype(np.float64)
    if a.dtype.kind in "iu" and a.dtype.itemsize > 1 and a.max() > 255:
        full = 65535.0
    elif a.dtype.kind in "iu":
        full = 255.0
    else:
        full = 1.0 if a.max() <= 1.0 else 255.0
    out = a.astype(np.float64) / full
    if out.min() < 0 or out.max() > 1:  # standardised or unusual ranges: use what is there
        out -= out.min()
        out /= max(out.max(), 1e-300)
    return out


def _grey(a: np.ndarray, name: str) -> np.ndarray:
    """Luminance; a transparent background composited over the colour opposite the ink."""
    if a.ndim == 2:
        return a
    channels = a.shape[2]
    lum = a[:, :, 0] if channels <= 2 else a[:, :, :3] @ np.array([0.299, 0.587, 0.114])
    if channels in (1, 3):
        return lum
    alpha = a[:, :, -1]
    if alpha.min() >= 1.0:
        return lum
    opaque = alpha > 0.5
    if not opaque.any():
        raise BlankImageError(f"{name}: fully transparent, there is no digit to read; draw one")
    background = 1.0 if lum[opaque].mean() < 0.5 else 0.0
    return lum * alpha + background * (1.0 - alpha)


def _shrink(a: np.ndarray, factor: int) -> np.ndarray:
    """Box-average ``factor`` x ``factor`` blocks (edges padded by replication)."""
    if factor <= 1:
        return a
    h, w = (-(-s // factor) * factor for s in a.shape)
    a = np.pad(a, ((0, h - a.shape[0]), (0, w - a.shape[1])), mode="edge")
    return a.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _border(a: np.ndarray) -> np.ndarray:
    k = max(1, round(0.05 * min(a.shape)))
    return np.concatenate([a[:k].ravel(), a[-k:].ravel(), a[:, :k].ravel(), a[:, -k:].ravel()])


def _ink(grey: np.ndarray, name: str) -> tuple[np.ndarray, float]:
    """Light ink on black, the ink's peak at 1, the paper's grain reduced; and the noise level.

    The noise level is three robust standard deviations of the border (median
    absolute deviation: a digit touching the border does not count as noise).
    """
    border = _border(grey)
    background = float(np.median(border))
    noise = 3.0 * 1.4826 * float(np.median(np.abs(border - background)))
    lo, hi = np.percentile(grey, [0.1, 99.9])
    darker, lighter = background - lo, hi - background
    if darker > lighter or (darker == lighter and background > 0.5):
        grey, background, hi = 1.0 - grey, 1.0 - background, 1.0 - lo
    contrast = hi - background
    if contrast < max(MIN_CONTRAST, 2 * noise):
        raise BlankImageError(
            f"{name}: blank, no digit found (ink contrast {max(contrast, 0):.1%}, "
            f"noise {noise:.1%}); give a picture of a digit"
        )
    noise /= contrast
    # Half the noise level off: most of the paper's grain goes, the strokes stay as thick.
    floor = min(noise / 2, 0.5)
    a = (grey - background) / contrast
    return np.clip((a - floor) / (1.0 - floor), 0.0, 1.0), noise


def _foreground(a: np.ndarray, noise: float, name: str) -> tuple[slice, slice]:
    """The digit's box: ink pixels with an ink neighbour, grown by their faint anti-aliased edge.

    Solid ink (above ``INK``, 8-connected to more) decides where the digit is, so
    an isolated speck of noise does not stretch the box; the faint edge within
    one output pixel (1/20 of the box) is then included, as it was in MNIST, as
    far as it stands out of the ``noise``.
    """
    ink = a > INK
    padded = np.pad(ink, 1)
    h, w = ink.shape
    neighbours = sum(
        padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if dy or dx
    )
    solid = ink & (neighbours > 0)
    if not solid.any():
        raise BlankImageError(
            f"{name}: blank, no digit found (only specks); give a picture of a digit"
        )
    rows, cols = np.flatnonzero(solid.any(1)), np.flatnonzero(solid.any(0))
    m = max(1, round(max(rows[-1] - rows[0], cols[-1] - cols[0]) / 20))
    r0, r1 = max(rows[0] - m, 0), min(rows[-1] + m + 1, h)
    c0, c1 = max(cols[0] - m, 0), min(cols[-1] + m + 1, w)
    edge = a[r0:r1, c0:c1] > min(noise, INK)
    rows, cols = np.flatnonzero(edge.any(1)) + r0, np.flatnonzero(edge.any(0)) + c0
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) anti-aliased linear resampling: a triangle filter widened when shrinking."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    w = np.clip(1.0 - np.abs(np.arange(n_in)[None, :] - centres[:, None]) / support, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def _resample(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return _resample_matrix(a.shape[0], size[0]) @ a @ _resample_matrix(a.shape[1], size[1]).T


def _place(digit: np.ndarray, shape: tuple[int, int], centre_of_mass: bool) -> np.ndarray:
    """``digit`` pasted into a black frame of ``shape``: centre of mass at H/2, W/2, or box centred."""
    out = np.zeros(shape)
    offsets = []
    for axis, (n, m) in enumerate(zip(shape, digit.shape)):
        if centre_of_mass:
            profile = digit.sum(axis=1 - axis)
            com = float(profile @ np.arange(m) / profile.sum())
            offset = round(n / 2 - com)
        else:  # half a pixel right/down, as the 8x8 digits are (5 wide: 127 from column 2, 74 from 1)
            offset = (n - m + 1) // 2
        offsets.append(min(max(offset, 0), n - m))
    out[offsets[0] : offsets[0] + digit.shape[0], offsets[1] : offsets[1] + digit.shape[1]] = digit
    return out
