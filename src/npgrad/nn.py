"""Modules: parameters, layers and networks built on the Tensor engine.

Modules hold no gradient formulas: their forward passes are compositions of
the op table (``x @ W + b``, ``relu``, ``x * mask``), and the engine derives
the backward pass from those ops' vjps.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from . import autodiff as T
from .autodiff import Tensor
from .errors import CheckpointError, ConfigError

__all__ = [
    "Parameter",
    "Module",
    "Linear",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "Dropout",
    "Sequential",
    "MLP",
    "ACTIVATIONS",
]


class Parameter(Tensor):
    """A leaf tensor that a :class:`Module` registers and optimizers update."""

    __slots__ = ()

    def __init__(self, data: Any, dtype: Any = None) -> None:
        super().__init__(data, requires_grad=True, dtype=dtype)


class Module:
    """Base class: attributes that are Parameters or Modules are registered in order."""

    def __init__(self) -> None:
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_params" not in self.__dict__:
            raise RuntimeError(f"call Module.__init__() in {type(self).__name__}.__init__ first")
        self._params.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args: Any) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, *args: Any) -> Tensor:
        return self.forward(*args)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, p in self._params.items():
            yield prefix + name, p
        for name, m in self._modules.items():
            yield from m.named_parameters(f"{prefix}{name}.")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def modules(self) -> Iterator[Module]:
        yield self
        for m in self._modules.values():
            yield from m.modules()

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter array by dotted name."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays into the parameters, in place; mismatches raise :class:`CheckpointError`."""
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        problems = []
        if missing and strict:
            problems.append(f"missing keys {missing}")
        if unexpected and strict:
            problems.append(f"unexpected keys {unexpected}")
        for name in sorted(set(own) & set(state)):
            if np.shape(state[name]) != own[name].shape:
                problems.append(
                    f"{name} has shape {np.shape(state[name])}, the model expects {own[name].shape}"
                )
        if problems:
            raise CheckpointError("state does not fit the model: " + "; ".join(problems))
        for name in set(own) & set(state):
            own[name].data[...] = state[name]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._modules.items())
        return f"{type(self).__name__}({inner})"


def _init_weight(
    fan_in: int, fan_out: int, init: str, rng: np.random.Generator, dtype: Any
) -> np.ndarray:
    init = init.lower()
    if init in ("he", "kaiming"):
        # Keeps the variance of ReLU activations constant from layer to layer.
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))
    elif init in ("glorot", "xavier"):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-limit, limit, size=(fan_in, fan_out))
    elif init == "normal":  # the exercise's unscaled N(0, 1)
        w = rng.normal(size=(fan_in, fan_out))
    else:
        raise ConfigError(f"unknown init {init!r}: use he, glorot or normal")
    return w.astype(dtype)


class Linear(Module):
    """``y = x @ W + b`` with W of shape (in, out), as in the exercise's ``Matmul``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init: str = "he",
        rng: np.random.Generator | int | None = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ConfigError(f"Linear needs positive sizes, got {in_features} -> {out_features}")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(_init_weight(in_features, out_features, init, rng, dtype))
        self.bias = Parameter(np.zeros(out_features, dtype=dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is None:
            return T.matmul(x, self.weight)
        return T.linear(x, self.weight, self.bias)

    def __repr__(self) -> str:
        return f"Linear({self.in_features}, {self.out_features}, bias={self.bias is not None})"


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return T.relu(x)

    def __repr__(self) -> str:
        return "ReLU()"


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return T.sigmoid(x)

    def __repr__(self) -> str:
        return "Sigmoid()"


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return T.tanh(x)

    def __repr__(self) -> str:
        return "Tanh()"


class Dropout(Module):
    """Inverted dropout: in training, zero each unit with probability ``p`` and scale by 1/(1-p).

    The mask is a constant of the graph, so the gradient is the ``mul`` op's.
    ``rng`` is the generator the masks are drawn from (the trainer shares its own
    so that checkpoints capture it).
    """

    def __init__(self, p: float = 0.5, rng: np.random.Generator | int | None = None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.p
        mask = keep.astype(x.dtype)
        mask *= x.dtype.type(1.0 / (1.0 - self.p))
        return x * mask

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"


class Sequential(Module):
    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    @property
    def layers(self) -> list[Module]:
        return list(self._modules.values())

    def forward(self, x: Tensor) -> Tensor:
        for layer in self._modules.values():
            x = layer(x)
        return x

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __repr__(self) -> str:
        return "Sequential(\n" + "\n".join(f"  {m!r}" for m in self.layers) + "\n)"


ACTIVATIONS: dict[str, type[Module]] = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}


class MLP(Sequential):
    """A fully connected network: ``MLP([784, 256, 10])`` is 784-256-10 with ReLU between.

    Dropout (if ``dropout > 0``) follows every hidden activation. The last layer
    outputs logits (no activation): pair it with :func:`npgrad.cross_entropy`.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        init: str | None = None,
        rng: np.random.Generator | int | None = None,
        dtype: Any = np.float32,
    ) -> None:
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or any(s <= 0 for s in sizes):
            raise ConfigError(f"MLP needs at least two positive sizes, got {sizes}")
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"unknown activation {activation!r}: use {', '.join(sorted(ACTIVATIONS))}"
            )
        init = init or ("he" if activation == "relu" else "glorot")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        layers: list[Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(Linear(a, b, init=init, rng=rng, dtype=dtype))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
                if dropout > 0:
                    layers.append(Dropout(dropout, rng=rng))
        super().__init__(*layers)
        self.sizes = sizes

    def set_rng(self, rng: np.random.Generator) -> None:
        """Draw dropout masks from ``rng`` from now on."""
        for m in self.modules():
            if isinstance(m, Dropout):
                m.rng = rng
