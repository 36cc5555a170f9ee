"""``npgrad predict``: classify image files, or every image in a folder."""

from __future__ import annotations

import argparse

from .common import formatter, print_error

BATCH = 256  # images read and classified at a time: a large folder never sits in memory whole


def run(args: argparse.Namespace) -> int:
    import json
    import warnings

    import numpy as np

    from ..app import images
    from ..app.models import load_for_inference
    from ..errors import CheckpointError, ConfigError, ImageError
    from ..ops import dense as ops

    if args.top < 1:
        raise ConfigError(f"--top must be 1 or more, got {args.top}")
    model, meta = load_for_inference(args.checkpoint)
    paths = images.image_paths(args.images)
    shape = tuple(meta["image_shape"])
    # width x height, as picture sizes are said
    shape_text = f"{shape[-1]}x{shape[-2]} as the model takes it"
    classes = list(meta["classes"])
    recipe = images.recipe_for(shape, classes)
    pixel_max = meta.get("pixel_max", 255.0)
    dtype = np.dtype(meta["config"]["dtype"])
    top = min(args.top, len(classes))
    refused = 0
    for start in range(0, len(paths), BATCH):
        chunk, pictures, sizes = [], [], []
        # NumPy's overflow warnings would name source files; the result is checked instead.
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            for p in paths[start : start + BATCH]:
                try:
                    picture, size = images.load_picture(p, shape, pixel_max, recipe)
                except ImageError as exc:  # one bad picture must not cost the others' answers
                    print_error(exc)
                    refused += 1
                    continue
                chunk.append(p)
                pictures.append(picture)
                sizes.append(size)
            if not chunk:
                continue
            x = np.stack(pictures)
            lp = model.log_probs(x.reshape(len(x), -1).astype(dtype))
            probs = ops.SoftmaxOp.forward(lp, axis=1)[0]  # renormalises the exercise's log(s + eps)
        if not np.isfinite(probs).all():
            raise CheckpointError(
                f"{args.checkpoint}: the model gives non-finite probabilities (weights overflow?); "
                "retrain it or use another checkpoint"
            )
        for path, pr, size in zip(chunk, probs, sizes):
            order = np.argsort(-pr, kind="stable")[:top]
            # a picture of another size than the model's is said so, never answered silently
            scaled = tuple(size) != shape
            if args.json:
                line = {"image": str(path), "prediction": classes[order[0]]}
                line["class_index"] = int(order[0])
                line["probabilities"] = {c: float(q) for c, q in zip(classes, pr)}
                if scaled:
                    line["scaled_from"] = list(size)
                print(json.dumps(line))
            else:
                ranked = ", ".join(f"{classes[i]} {pr[i]:.1%}" for i in order)
                note = (
                    f"   [a {size[1]}x{size[0]} picture, scaled to {shape_text}]" if scaled else ""
                )
                print(f"{path}: {classes[order[0]]}   ({ranked}){note}")
    return 2 if refused else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files with a trained checkpoint",
        description="Predict the class of PNG/JPEG/BMP/GIF/WebP pictures (needs Pillow) or\n"
        ".npy arrays; a folder stands for every image in it. Each picture is normalised\n"
        "as MNIST's digits were: transparency composited, dark-on-light inverted,\n"
        "contrast stretched, the digit cropped, scaled into a 20x20 box and centred\n"
        "by its centre of mass in 28x28 (8x8 models: scaled to fill the frame).\n"
        "A .npy array of exactly the model's input shape is used as it is. A picture that\n"
        "cannot be used is named on stderr and the others are still classified; the\n"
        "exit status is then 2.",
        epilog="""\
examples:
  npgrad predict runs/digits-default/checkpoint.npz seven.png
  npgrad predict runs/digits-default my_digits/ --top 1
  npgrad predict runs/digits-default digit1.png digit2.jpg --top 3
  npgrad predict runs/digits-default/checkpoint.npz sample.npy --json""",
        formatter_class=formatter,
    )
    p.add_argument("checkpoint", help="checkpoint.npz written by 'npgrad train' (or its directory)")
    p.add_argument(
        "images", nargs="+", metavar="IMAGE", help="picture, .npy array, or a folder of them"
    )
    p.add_argument(
        "--top",
        type=int,
        default=3,
        metavar="K",
        help="show the K most likely classes (default 3; at most the number of classes)",
    )
    p.add_argument("--json", action="store_true", help="one JSON line per image")
    p.set_defaults(func=run)
