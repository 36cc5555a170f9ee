"""``npgrad predict``: classify image files."""

from __future__ import annotations

import argparse

import numpy as np

from .common import formatter


def load_image(path: str, shape: tuple[int, int], pixel_max: float) -> np.ndarray:
    """An image file as floats in [0, 1] of ``shape``, light digit on dark background."""
    from pathlib import Path

    from ..errors import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such image file")
    if p.suffix.lower() == ".npy":
        try:
            raw = np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise ConfigError(f"{path}: not a plain .npy array ({exc})") from None
        if raw.size != shape[0] * shape[1]:
            raise ConfigError(
                f"{path}: array of shape {raw.shape}, the model expects {shape[0]}x{shape[1]}"
            )
        a = raw.reshape(shape).astype(np.float64)
        if not np.isfinite(a).all():
            raise ConfigError(f"{path}: contains NaN or infinite pixel values")
        if np.issubdtype(raw.dtype, np.integer) or a.max() > 1.0:
            # integer pixels count 0..pixel_max as in training (0..255 if larger)
            a = a / (pixel_max if a.max() <= pixel_max else 255.0)
        return a
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ConfigError(
            f"{path}: reading images needs Pillow: pip install 'npgrad[cli]' (or use .npy)"
        ) from None
    try:
        with Image.open(p) as img:
            g = img.convert("L").resize((shape[1], shape[0]), Image.Resampling.LANCZOS)
            a = np.asarray(g, dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable image ({exc})") from None
    if a.mean() > 0.5:  # dark ink on light paper: invert to MNIST's convention
        a = 1.0 - a
    return a


def run(args: argparse.Namespace) -> int:
    import json

    from .. import ops
    from ..train import load_for_inference

    model, meta = load_for_inference(args.checkpoint)
    shape = tuple(meta["image_shape"])
    classes = list(meta["classes"])
    x = np.stack([load_image(p, shape, meta.get("pixel_max", 255.0)) for p in args.images])
    dtype = np.dtype(meta["config"]["dtype"])
    lp = model.log_probs(x.reshape(len(x), -1).astype(dtype))
    probs = ops.Softmax.forward(lp, axis=1)[0]  # renormalises the exercise's log(s + eps) too
    for path, pr in zip(args.images, probs):
        order = np.argsort(-pr)[: args.top]
        if args.json:
            print(json.dumps({"image": path, "prediction": classes[order[0]], "class_index": int(order[0]),
                              "probabilities": {classes[i]: float(pr[i]) for i in range(len(classes))}}))  # fmt: skip
        else:
            top = ", ".join(f"{classes[i]} {pr[i]:.1%}" for i in order)
            print(f"{path}: {classes[order[0]]}   ({top})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files with a trained checkpoint",
        description="Predict the class of PNG/JPEG images (needs Pillow) or .npy arrays.\n"
        "Images are converted to grey, resized to the model's input and, if they are\n"
        "dark on light, inverted to MNIST's light-on-dark convention.",
        epilog="""\
examples:
  npgrad predict runs/mnist-default/checkpoint.npz seven.png
  npgrad predict runs/mnist-default digit1.png digit2.jpg --top 3
  npgrad predict runs/digits-default/checkpoint.npz sample.npy --json""",
        formatter_class=formatter,
    )
    p.add_argument("checkpoint", help="checkpoint.npz written by 'npgrad train' (or its directory)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG image or .npy array")
    p.add_argument(
        "--top", type=int, default=3, metavar="K", help="show the K most likely classes (default 3)"
    )
    p.add_argument("--json", action="store_true", help="one JSON line per image")
    p.set_defaults(func=run)
