"""``npgrad check``: check a student's own layer classes and function pairs."""

from __future__ import annotations

import argparse
import math
import re
import sys

from .common import formatter

MAX_ELEMENTS = 1_000_000  # per input: central differences run forward twice per element
_SIZES = re.compile(r"[1-9][0-9]*(x[1-9][0-9]*)*")
_INTS = re.compile(r"[0-9]+(,[0-9]+)+")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


def _parse_shape_option(items: list[str] | None) -> dict[str, list[tuple[int, ...]]]:
    from ..errors import ConfigError

    out: dict[str, list[tuple[int, ...]]] = {}
    for item in items or []:
        name, sep, spec = item.partition("=")
        parts = spec.split(",")
        if not sep or not name.isidentifier() or not all(_SIZES.fullmatch(p) for p in parts):
            raise ConfigError(
                f"bad --shape {item!r}: give NAME=SIZES with positive whole sizes, "
                "e.g. Relu=5x6, Matmul=5x6,6x4 or conv_forward_naive=2x3x8x8,4x3x3x3,4"
            )
        shapes = [tuple(int(n) for n in p.split("x")) for p in parts]
        if any(math.prod(s) > MAX_ELEMENTS for s in shapes):
            raise ConfigError(
                f"bad --shape {item!r}: at most {MAX_ELEMENTS:,} elements per input "
                "(the numerical gradient runs forward twice per element)"
            )
        out[name] = shapes
    return out


def _value(text: str) -> int | float | str | bool | tuple[int, ...] | None:
    """'2' -> 2, '1e-5' -> 1e-05, '2,3' -> (2, 3), 'true' -> True, 'none' -> None, anything
    else as it is."""
    if _INTS.fullmatch(text):
        return tuple(int(n) for n in text.split(","))
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            number = kind(text)
        except ValueError:
            continue
        return number if math.isfinite(number) else text
    return text


def _parse_param_option(items: list[str] | None) -> dict[str, dict[str, object]]:
    from ..errors import ConfigError

    out: dict[str, dict[str, object]] = {}
    for item in items or []:
        name, sep, setting = item.partition("=")
        key, colon, value = setting.partition(":")
        if not (sep and colon and name.isidentifier() and _KEY.fullmatch(key) and value):
            raise ConfigError(
                f"bad --param {item!r}: give NAME=KEY:VALUE, e.g. conv_forward_naive=stride:1, "
                "batchnorm_forward=mode:test or MaxPool=kernel_size:2,3"
            )
        out.setdefault(name, {})[key] = _value(value)
        _check_geometry(item, key.rpartition(".")[2], out[name][key])
    return out


# Window geometry a convolution or pooling takes: ints (or pairs) of at least this much.
_GEOMETRY = {"stride": 1, "dilation": 1, "kernel_size": 1, "kernel": 1, "pool_size": 1,
             "pool_height": 1, "pool_width": 1, "padding": 0, "pad": 0}  # fmt: skip


def _check_geometry(item: str, key: str, value: object) -> None:
    """A stride of 0 or a padding of -1 is the option's mistake, not the checked layer's."""
    from ..errors import ConfigError
    from ..ops.geometry import as_pair

    if key in _GEOMETRY and isinstance(value, (int, float, tuple)):  # None, "same": the layer's
        try:
            as_pair(value, key, _GEOMETRY[key])
        except ConfigError as exc:
            raise ConfigError(f"bad --param {item!r}: {exc}") from None


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, not {text!r}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    from ..checking.function_pairs import PairReport, PairReports
    from ..checking.gradcheck import torch_available
    from ..checking.user_files import check_file

    shapes = _parse_shape_option(args.shape)
    params = _parse_param_option(args.param)
    use_torch = torch_available() and not args.no_torch
    what = [w for w, given in (("classes", args.cls), ("pairs", args.pair)) if given]
    only = (args.cls or []) + (args.pair or [])
    reports, error = check_file(
        args.file,
        shapes,
        only,
        use_torch,
        args.seed,
        args.timeout,
        params,
        what or ("classes", "pairs"),
    )
    if error:
        print(f"{args.file}: {error}", file=sys.stderr)
        return 1
    pairs = PairReports(r for r in reports if isinstance(r, PairReport))
    classes = [r for r in reports if not isinstance(r, PairReport)]
    if pairs:
        print(pairs)
    for r in classes:
        print(("\n" if pairs else "") + str(r))
    counts = []
    if classes:
        why = "--no-torch" if args.no_torch else "PyTorch not installed"
        counts.append(
            f"{sum(r.passed for r in classes)} of {len(classes)} layer classes passed"
            + ("" if use_torch else f" ({why}: numerical checks only)")
        )
    if pairs:
        line = f"{sum(r.passed for r in pairs)} of {len(pairs)} function pairs passed"
        unchecked = sum(bool(getattr(r, "not_checked", None)) for r in pairs)
        counts.append(line + (f" ({unchecked} not checked)" if unchecked else ""))
    print("\n" + "; ".join(counts))
    # a pair npgrad cannot check is said so, and is not the file's failure
    return 0 if all(r.passed or getattr(r, "not_checked", None) for r in reports) else 1


def register(sub: argparse._SubParsersAction) -> None:
    from ..checking.sandbox import DEFAULT_TIMEOUT

    p = sub.add_parser(
        "check",
        help="check the backward passes of your own layer classes and function pairs",
        description="Import FILE.py, find every class with forward() and backward(), every\n"
        "function pair X_forward(...) -> (out, cache) / X_backward(dout, cache) (CS231n's\n"
        "convention, with _naive and _alt variants) and every loss X_loss(x, y) -> (loss, dx),\n"
        "and check each backward against numerical gradients (classes named like npgrad's\n"
        "layers also against npgrad's and PyTorch's; pairs named like the course's layers also\n"
        "against their definitions; convolution, pooling and batch-norm classes get 4-D inputs\n"
        "and stride 2, padding 1 where their constructor takes them, and are compared with\n"
        "npgrad's ops). When a gradient is wrong, npgrad says where and, if it\n"
        "can tell, why. Your file runs in a separate process: if it hangs, exits or crashes,\n"
        "npgrad says which class or pair was doing what, and whatever it started is killed\n"
        "when the check ends (on Linux also a daemon that left its session; elsewhere what\n"
        "stayed in its process group). That process only reports what your code returned:\n"
        "the comparisons and verdicts are made outside it, where patching npgrad cannot reach.",
        epilog="""\
examples:
  npgrad check my_layers.py
  npgrad check my_layers.py --class Softmax
  npgrad check my_layers.py --shape Matmul=8x3,3x5 --shape Relu=4x7
  npgrad check layers.py --pair conv_forward_naive --param conv_forward_naive=stride:1
  npgrad check conv_layers.py --class Conv --param Conv=stride:1 --shape Conv=2x3x8x8,4x3x3x3,4
  npgrad check conv_layers.py --param MaxPool=kernel_size:2,3 --param MaxPool=stride:2
  npgrad check layers.py --param batchnorm_forward=mode:test --param max_pool_forward_naive=pool_param.stride:1
  npgrad check slow_layers.py --timeout 300

inputs of function pairs: named by the kind of layer (affine, relu, batchnorm, layernorm,
dropout, conv, max_pool, spatial_batchnorm, spatial_groupnorm, svm/softmax losses); see
'python -m pydoc npgrad.checking.function_pairs'. Batch norm is checked in train and test mode, dropout too.
Classes named like a convolution (Conv...), pooling (MaxPool, AvgPool, Pool...) or batch
norm (BatchNorm, BN...) get NCHW inputs (2x3x7x9 with a 4x3x3x5 kernel; 2x3x8x9 for pooling,
its values without ties) and their constructor's stride, padding and window arguments are
set (stride 2, padding 1, a 2x3 window); --param sets them by name.

exit status: 0 if everything passes (warnings allowed); 1 if something fails, hangs or
crashes, or the file cannot be imported; 2 for a usage error (no such file, class or
function, a bad option, a --param that cannot apply: an input array such as y, a key
or a type the course's layer does not take).""",
        formatter_class=formatter,
    )
    p.add_argument("file", help="a Python file defining layer classes or function pairs")
    p.add_argument(
        "--class",
        dest="cls",
        action="append",
        metavar="NAME",
        help="check only this class (repeatable)",
    )
    p.add_argument(
        "--pair",
        action="append",
        metavar="FUNCTION",
        help="check only this function pair or loss, by its forward's name (repeatable)",
    )
    p.add_argument(
        "--shape",
        action="append",
        metavar="NAME=SHAPES",
        help="input shapes of a class or forward function, e.g. Matmul=5x6,6x4",
    )
    p.add_argument(
        "--param",
        action="append",
        metavar="NAME=KEY:VALUE",
        help="a parameter of a function pair or a constructor argument of a class, e.g. "
        "conv_forward_naive=stride:1 or Conv=padding:0 (repeatable)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"time limit for checking the whole file (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed for the random inputs (default 0)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.set_defaults(func=run)
