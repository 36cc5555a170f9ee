"""Every training option, declared once.

Each :class:`Option` says everything about one setting: its type (how the
command line's text becomes a value), its default, its value in each preset
and, for the default preset, on each dataset family, the check a value must
pass, its help text and flag, which model kinds use it, and whether
``--resume`` may change it. From this one table come:

* :class:`Config`, the dataclass stored in every checkpoint (its defaults are
  the table's; a test holds its fields, their order and types to the table);
* :func:`make_config` (preset merging and validation);
* :func:`resume_config` (what a resumed run may change);
* the ``npgrad train`` flags, their help and the defaults it shows
  (:func:`add_arguments`, used by :mod:`npgrad.cli.train`).

NumPy-free and import-light: the command line builds its parser from here.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError

MODELS = ("mlp", "cnn", "exercise")
# The model kinds trained by an optimizer on the Tensor engine (not the exercise's recipe).
OPTIMIZED = ("mlp", "cnn")
PRESETS = ("default", "plain", "cnn", "exercise")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
ACTIVATIONS = ("relu", "sigmoid", "tanh")
INITS = ("he", "glorot", "normal")
DTYPES = ("float32", "float64")
NAMED_DATASETS = ("mnist", "fashion-mnist", "digits")

# --------------------------------------------------------------------------- parsers


def parse_hidden(text: str) -> list[int]:
    """``"256,128"`` or ``"256-128"`` -> [256, 128]; ``"none"``/``"0"`` -> [] (no hidden layer)."""
    text = str(text).strip().lower()
    if text in ("", "none", "0"):
        return []
    return _sizes(text, "hidden sizes", "--hidden 256,128", "('none' for no hidden layer)")


def parse_channels(text: str) -> list[int]:
    """``"16,32"`` -> [16, 32]: the output channels of each convolution block."""
    return _sizes(str(text).strip().lower(), "channel counts", "--channels 16,32", "")


def _sizes(text: str, what: str, example: str, none: str) -> list[int]:
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    if len(parts) == 1 and "-" in text.lstrip("-"):
        parts = [p.strip() for p in text.split("-")]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"bad architecture {text!r}: give {what} as integers, e.g. {example}"
        ) from None
    if any(s <= 0 for s in sizes):
        raise ConfigError(f"bad architecture {text!r}: {what} must be positive {none}".rstrip())
    return sizes


def parse_batch_size(text: str) -> int:
    """A positive integer, or ``full``/``0`` for the whole training set in one step."""
    if str(text).strip().lower() in ("full", "0"):
        return 0
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"expected a positive integer or 'full', got {text!r}") from None


def _number(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise ConfigError(f"expected {what}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def _flag(text: str) -> bool:
    """A flag's value as text (the table's type check; on the command line a flag takes none)."""
    value = {"true": True, "false": False, "1": True, "0": False}.get(text.strip().lower())
    if value is None:
        raise ConfigError(f"expects true or false, not {text!r}")
    return value


def _is_flag(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, not {v!r}"


def _text(text: str) -> str:
    return str(text).strip().lower()


def _dataset(text: str) -> str:
    """Named datasets stay names; a directory is stored absolute, so the run works from anywhere."""
    text = str(text).strip()
    if text.lower() in NAMED_DATASETS:
        return text.lower()
    path = Path(text).expanduser()
    return str(path.resolve()) if path.is_dir() or os.sep in text else text


def existing_dir(text: str | None) -> str | None:
    """A ``--data-dir`` the user gives, absolute; a mistyped one must not be skipped silently.

    (A run's stored one is only a place to search: it may be gone when the run is read.)
    """
    if text is None:
        return None
    path = Path(text).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"--data-dir {text}: no such directory")
    return str(path)


# --------------------------------------------------------------------------- checks


def _finite(
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    what: str = "",
) -> Callable[[Any], str | None]:
    """A check for a number in a range; the message states the range."""

    def check(v: Any) -> str | None:
        bad = not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)
        if not bad and lo is not None:
            bad = v <= lo if lo_open else v < lo
        if not bad and hi is not None:
            bad = v >= hi if hi_open else v > hi
        if not bad:
            return None
        lo_s = "" if lo is None else f"{'(' if lo_open else '['}{lo:g}"
        hi_s = "" if hi is None else f"{hi:g}{')' if hi_open else ']'}"
        if lo is not None and hi is not None:
            rng = f"in {lo_s}, {hi_s}"
        elif lo is not None:
            rng = "positive" if lo == 0 and lo_open else f"at least {lo:g}"
        else:
            rng = f"at most {hi:g}"
        return f"must be {what or 'a number'} {rng}, got {v}"

    return check


def _integer(lo: int, hi: int | None = None) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            if hi is None:
                return f"must be an integer >= {lo}, got {v}"
            return f"must be an integer between {lo} and {hi}, got {v}"
        return None

    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in choices else f"unknown value {v!r}: use {', '.join(choices)}"

    return check


def _hidden_ok(v: Any) -> str | None:
    if not isinstance(v, list) or any(isinstance(h, bool) or not isinstance(h, int) for h in v):
        return f"must be a list of integers, got {v!r}"
    if any(h <= 0 for h in v):
        return f"hidden sizes must be positive, got {v}"
    return None


def _channels_ok(v: Any) -> str | None:
    return _hidden_ok(v) or (None if v else "needs at least one convolution block")


def _odd_kernel(v: Any) -> str | None:
    return _integer(1, 15)(v) or (None if v % 2 else f"must be odd, got {v}")


def _anything(_v: Any) -> str | None:
    return None


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Option:
    """One training option: everything about it, in one place."""

    name: str  # the Config field
    default: Any
    help: str
    group: str  # "data", "model", "optimisation"
    parse: Callable[[str], Any] = _text  # command-line text -> value
    check: Callable[[Any], str | None] = _anything  # value -> error message or None
    choices: tuple[str, ...] | None = None
    flags: tuple[str, ...] = ()  # default: --name-with-dashes
    metavar: str | None = None
    presets: Mapping[str, Any] = field(default_factory=dict)  # preset -> value
    families: Mapping[str, Any] = field(default_factory=dict)  # default preset, per dataset
    models: tuple[str, ...] | None = None  # model kinds that use it; None: all
    resumable: bool = False  # may --resume change it
    cli: bool = True  # False: set by presets only

    @property
    def flag_names(self) -> tuple[str, ...]:
        return self.flags or ("--" + self.name.replace("_", "-"),)

    @property
    def flag(self) -> str:
        return self.flag_names[0]

    def validate(self, value: Any) -> None:
        problem = _one_of(self.choices)(value) if self.choices else self.check(value)
        if problem:
            raise ConfigError(f"{self.flag} {problem}")


OPTIONS: tuple[Option, ...] = (
    # data
    Option(
        "dataset",
        "mnist",
        "mnist, fashion-mnist, digits, or a directory with the four IDX files",
        "data",
        parse=_dataset,
        flags=("--dataset", "-d"),
        metavar="NAME|DIR",
        resumable=True,
    ),
    Option(
        "data_dir",
        None,
        "look for named datasets in DIR (and DIR/NAME) first",
        "data",
        parse=existing_dir,
        metavar="DIR",
        resumable=True,
    ),
    Option(
        "val_fraction",
        0.0,
        "hold out this fraction of the training set for validation",
        "data",
        parse=_number(float),
        check=_finite(0, 1, hi_open=True, what="a fraction"),
        flags=("--val",),
        metavar="FRACTION",
    ),
    Option(
        "shift",
        1,
        "random shift augmentation, 0 to 4 pixels",
        "data",
        parse=_number(int),
        check=_integer(0, 4),
        metavar="PIXELS",
        presets={"plain": 0, "exercise": 0},
        families={"fashion-mnist": 0},
        models=OPTIMIZED,
    ),
    # model
    Option(
        "model",
        "mlp",
        "the kind of network: mlp (fully connected), cnn (convolution blocks, then a "
        "fully connected head), or exercise (the exercise's layer classes, ones column as bias, "
        "full-batch gradient descent)",
        "model",
        choices=MODELS,
        metavar="KIND",
        presets={"cnn": "cnn", "exercise": "exercise"},
    ),
    Option(
        "hidden",
        [256],
        "hidden layer sizes, e.g. 256 or 512,256 ('none' for no hidden layer)",
        "model",
        parse=parse_hidden,
        check=_hidden_ok,
        metavar="SIZES",
        presets={"plain": [100], "cnn": [128], "exercise": [100]},
        families={"digits": [512]},
    ),
    Option(
        "channels",
        [32, 64],
        "output channels of each convolution block, e.g. 16,32",
        "model",
        parse=parse_channels,
        check=_channels_ok,
        metavar="SIZES",
        models=("cnn",),
    ),
    Option(
        "kernel",
        3,
        "convolution kernel size (odd: same padding keeps the image size)",
        "model",
        parse=_number(int),
        check=_odd_kernel,
        metavar="K",
        models=("cnn",),
    ),
    Option(
        "sync_bn",
        False,
        "data-parallel runs: batch norm statistics of the whole batch, summed over the "
        "workers (equals one process); without it each worker's own, as PyTorch's DDP",
        "model",
        parse=_flag,
        check=_is_flag,
        models=("cnn",),
    ),
    Option(
        "activation",
        "relu",
        "hidden activation",
        "model",
        choices=ACTIVATIONS,
        metavar="NAME",
        models=OPTIMIZED,
    ),
    Option(
        "dropout",
        0.2,
        "dropout after each hidden layer",
        "model",
        parse=_number(float),
        check=_finite(0, 1, hi_open=True, what="a probability"),
        metavar="P",
        presets={"plain": 0.0, "cnn": 0.25, "exercise": 0.0},
        families={"digits": 0.5},
        models=OPTIMIZED,
    ),
    Option(
        "init",
        "he",
        "weight initialisation",
        "model",
        choices=INITS,
        metavar="NAME",
        presets={"exercise": "normal"},
        models=OPTIMIZED,
    ),
    Option(
        "dtype",
        "float32",
        "floating-point type of weights and data",
        "model",
        choices=DTYPES,
        metavar="TYPE",
        presets={"exercise": "float64"},
    ),
    # optimisation
    Option(
        "epochs",
        10,
        "number of epochs",
        "optimisation",
        parse=_number(int),
        check=_integer(1, 100_000),
        flags=("--epochs", "-e"),
        metavar="N",
        presets={"exercise": 50},
        families={"digits": 200},
        resumable=True,
    ),
    Option(
        "batch_size",
        128,
        "minibatch size; 'full' (or 0) for the whole training set in one step",
        "optimisation",
        parse=parse_batch_size,
        check=_integer(0),
        flags=("--batch-size", "-b"),
        metavar="N|full",
        presets={"cnn": 64, "exercise": 0},
        families={"digits": 64},
    ),
    Option(
        "optimizer",
        "adam",
        "optimizer",
        "optimisation",
        choices=OPTIMIZERS,
        metavar="NAME",
        models=OPTIMIZED,
    ),
    Option(
        "lr",
        3e-3,
        "(peak) learning rate",
        "optimisation",
        parse=_number(float),
        check=_finite(0, 1e3, lo_open=True),
        metavar="RATE",
        presets={"plain": 1e-3, "exercise": 1e-5},
        families={"digits": 1e-2},
    ),
    Option(
        "momentum",
        0.9,
        "momentum of the sgd variants",
        "optimisation",
        parse=_number(float),
        check=_finite(0, 1, hi_open=True),
        metavar="M",
        models=OPTIMIZED,
    ),
    Option(
        "weight_decay",
        0.0,
        "weight decay",
        "optimisation",
        parse=_number(float),
        check=_finite(0),
        metavar="WD",
        models=OPTIMIZED,
    ),
    Option(
        "schedule",
        "onecycle",
        "learning-rate schedule",
        "optimisation",
        choices=SCHEDULES,
        metavar="NAME",
        presets={"plain": "constant"},
        models=OPTIMIZED,
    ),
    Option(
        "warmup_epochs",
        0.0,
        "linear warm-up epochs (cosine, step, constant)",
        "optimisation",
        parse=_number(float),
        check=_finite(0),
        flags=("--warmup",),
        metavar="EPOCHS",
        models=OPTIMIZED,
    ),
    Option(
        "clip",
        0.0,
        "clip the gradient norm to NORM (0: no clipping)",
        "optimisation",
        parse=_number(float),
        check=_finite(0),
        metavar="NORM",
        models=OPTIMIZED,
    ),
    Option(
        "seed",
        0,
        "random seed; same seed, same bits",
        "optimisation",
        parse=_number(int),
        check=_integer(0, 2**63 - 1),
        metavar="N",
    ),
    Option(
        "keep_denormals",
        False,
        "compute with subnormal floats (below 1.2e-38 in float32) instead of flushing them to "
        "zero, as training does by default: they are slow on some processors (npgrad.fpenv)",
        "optimisation",
        parse=_flag,
        check=_is_flag,
    ),
)
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def _default(name: str) -> Any:
    """A :class:`Config` field whose default is option ``name``'s in :data:`OPTIONS` (copied)."""
    option = BY_NAME[name]
    return field(default_factory=lambda: _copy(option.default))


@dataclass
class Config:
    """Everything that defines a run; stored in every checkpoint.

    One field per :data:`OPTIONS` entry, in the table's order, after ``preset``.
    The defaults come from the table (tests/app/test_config.py holds the two together).
    """

    preset: str = "default"
    # data
    dataset: str = _default("dataset")
    data_dir: str | None = _default("data_dir")
    val_fraction: float = _default("val_fraction")
    shift: int = _default("shift")
    # model
    model: str = _default("model")
    hidden: list[int] = _default("hidden")
    channels: list[int] = _default("channels")
    kernel: int = _default("kernel")
    sync_bn: bool = _default("sync_bn")
    activation: str = _default("activation")
    dropout: float = _default("dropout")
    init: str = _default("init")
    dtype: str = _default("dtype")
    # optimisation
    epochs: int = _default("epochs")
    batch_size: int = _default("batch_size")
    optimizer: str = _default("optimizer")
    lr: float = _default("lr")
    momentum: float = _default("momentum")
    weight_decay: float = _default("weight_decay")
    schedule: str = _default("schedule")
    warmup_epochs: float = _default("warmup_epochs")
    clip: float = _default("clip")
    seed: int = _default("seed")
    keep_denormals: bool = _default("keep_denormals")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Config:
        return config_from_dict(d)


def _copy(v: Any) -> Any:
    return list(v) if isinstance(v, list) else v


# --------------------------------------------------------------------------- building configs


def preset_values(preset: str, family: str | None = None) -> dict[str, Any]:
    """Every option's value in ``preset`` (on dataset ``family`` for the default preset)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: use {', '.join(PRESETS)}")
    values = {}
    for o in OPTIONS:
        v = o.presets.get(preset, o.default)
        if preset == "default" and family is not None and family in o.families:
            v = o.families[family]
        values[o.name] = _copy(v)
    return values


def validate(cfg: Config, explicit: Mapping[str, Any] | None = None) -> None:
    """Check every value; refuse explicit options the chosen model does not use."""
    for o in OPTIONS:
        o.validate(getattr(cfg, o.name))
    for name in explicit or {}:
        o = BY_NAME[name]
        if o.models is not None and cfg.model not in o.models:
            raise ConfigError(
                f"{o.flag} is not used by the {cfg.model} model; drop it "
                f"(or choose --model {o.models[0]})"
            )
    if cfg.model == "exercise":
        if len(cfg.hidden) != 1:
            raise ConfigError(
                f"the exercise model has exactly one hidden layer, got --hidden {cfg.hidden}"
            )


def make_config(preset: str = "default", family: str | None = None, **overrides: Any) -> Config:
    """A preset's configuration with explicit ``overrides`` (None values are ignored).

    ``family`` names the dataset family (``digits``, ``fashion-mnist``...) whose
    adapted values the default preset uses; by default it is the dataset's name.
    """
    explicit = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(explicit) - set(BY_NAME)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(sorted(unknown))}")
    if "dataset" in explicit:
        explicit["dataset"] = _dataset(explicit["dataset"])
    if family is None:
        family = explicit.get("dataset", BY_NAME["dataset"].default)
    values = preset_values(preset, family)
    values.update({k: _copy(v) for k, v in explicit.items()})
    cfg = Config(preset=preset, **values)
    validate(cfg, explicit)
    return cfg


def resume_config(stored: Config, changes: Mapping[str, Any]) -> Config:
    """The stored configuration with the ``changes`` a resumed run may make.

    An option that is not resumable may be repeated with its stored value, not
    changed: a resumed run continues the same experiment.
    """
    cfg = dataclasses.replace(stored)
    for name, value in changes.items():
        if value is None:
            continue
        if name == "preset":
            if value != stored.preset:
                raise ConfigError(
                    f"--preset cannot change when resuming (the run was trained with "
                    f"{stored.preset}); drop it, or start a new run with --out"
                )
            continue
        o = BY_NAME[name]
        stored_value = getattr(stored, name)
        if name == "dataset":
            value = _dataset(value)
        if o.resumable:
            setattr(cfg, name, _copy(value))
        elif value != stored_value:
            raise ConfigError(
                f"{o.flag} cannot change when resuming (the run was trained with "
                f"{_show(stored_value)}); drop it, or start a new run with --out"
            )
    validate(cfg)
    return cfg


# Keys older checkpoints stored that are now implied by the model kind.
_LEGACY_KEYS = ("loss_reduction",)


def config_from_dict(d: Mapping[str, Any]) -> Config:
    """A :class:`Config` from a checkpoint's stored dictionary (older layouts included)."""
    if not isinstance(d, Mapping):
        raise CheckpointError("configuration is not a mapping")
    d = {k: v for k, v in d.items() if k not in _LEGACY_KEYS}
    if "model" not in d:  # before the model option: the exercise was optimizer "gd"
        d["model"] = "exercise" if d.get("optimizer") == "gd" else "mlp"
    if d.get("optimizer") == "gd":
        d["optimizer"] = BY_NAME["optimizer"].default
    # runs stored before the option computed with subnormals: they continue so
    d.setdefault("keep_denormals", True)
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = set(d) - known
    if unknown:
        raise CheckpointError(f"configuration has unknown keys {sorted(unknown)}")
    cfg = Config(**d)
    try:
        validate(cfg)
    except ConfigError as exc:
        raise CheckpointError(f"stored configuration is invalid: {exc}") from None
    return cfg


def _show(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v)) or "none"
    return f"{v:g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------- the command line


def option_help(o: Option) -> str:
    """The help text with the value each preset (and dataset family) really uses."""
    text = o.help
    if o.choices:
        text += f": {', '.join(o.choices)}"
    parts = [f"default {_show(o.default)}"]
    parts += [f"{f} {_show(v)}" for f, v in o.families.items()]
    parts += [f"{p} preset {_show(v)}" for p, v in o.presets.items()]
    if o.models is not None:
        parts.append(f"{'/'.join(o.models)} only")
    return f"{text} ({'; '.join(parts)})"


def add_arguments(parser: Any) -> dict[str, Any]:
    """Add every option's flag to an argparse parser, grouped; returns the groups by name.

    Defaults are left as None, so that :func:`explicit_options` can tell an
    option the user gave from one the preset supplies.
    """
    import argparse

    def typed(o: Option) -> Callable[[str], Any]:
        def convert(text: str) -> Any:
            try:
                value = o.parse(text)
                o.validate(value)
            except ConfigError as exc:
                msg = str(exc)
                raise argparse.ArgumentTypeError(msg.removeprefix(o.flag + " ")) from None
            return value

        convert.__name__ = o.name  # argparse names the type in its messages
        return convert

    groups: dict[str, Any] = {}
    for o in OPTIONS:
        if not o.cli:
            continue
        if o.group not in groups:
            groups[o.group] = parser.add_argument_group(o.group)
        if isinstance(o.default, bool):  # a flag: present means true
            groups[o.group].add_argument(
                *o.flag_names, dest=o.name, action="store_const", const=True, default=None,
                help=option_help(o),
            )  # fmt: skip
            continue
        groups[o.group].add_argument(
            *o.flag_names,
            dest=o.name,
            type=typed(o),
            default=None,
            metavar=o.metavar,
            help=option_help(o),
        )
    return groups


def explicit_options(args: Any) -> dict[str, Any]:
    """The options the user gave on the command line (argparse Namespace -> dict)."""
    return {
        o.name: getattr(args, o.name) for o in OPTIONS if getattr(args, o.name, None) is not None
    }


PRESET_HELP = {
    "default": "what we recommend: He init, Adam with a one-cycle schedule, random shifts, dropout",
    "plain": "plain Adam, no augmentation or regularisation: the baseline the default beats",
    "cnn": "a convolutional network: conv blocks with batch norm and pooling, a small head",
    "exercise": "the exercise, exactly: layer classes, N(0,1) weights, ones column as bias, "
    "full-batch gradient descent on the summed loss",
}


def preset_summary() -> str:
    """The presets for ``--help``: each one's purpose and the values where it differs."""
    lines = ["presets (explicit options override them; values differing from the defaults):"]
    for preset in PRESETS:
        values = preset_values(preset)
        diff = [
            f"{BY_NAME[k].flag} {_show(v)}"
            for k, v in values.items()
            if preset != "default" and v != BY_NAME[k].default
        ]
        lines.append(f"  {preset:<9} {PRESET_HELP[preset]}")
        if diff:
            lines.append(f"  {'':<9} {' '.join(diff)}")
    lines.append(
        "  the default preset adapts to the dataset: "
        + "; ".join(
            f"{fam}: "
            + " ".join(f"{o.flag} {_show(o.families[fam])}" for o in OPTIONS if fam in o.families)
            for fam in sorted({f for o in OPTIONS for f in o.families})
        )
    )
    return "\n".join(lines)
