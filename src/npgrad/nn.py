"""Modules: parameters, layers and networks built on the Tensor engine.

Modules hold no gradient formulas: their forward passes are compositions of
the op table (``x @ W + b``, ``relu``, ``x * mask``, ``conv2d``), and the engine
derives the backward pass from those ops' vjps.

A module owns *parameters* (trained, in :meth:`Module.parameters`) and
*buffers* (state that is not trained, such as batch norm's running
statistics): both are in :meth:`Module.state_dict`, so checkpoints carry them.
``train()``/``eval()`` switch Dropout and batch norm between their modes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from . import autodiff, tracing
from .autodiff import Tensor
from .errors import CheckpointError, ConfigError, ShapeError
from .ops.device import host_copy, is_ndarray, namespace, to_device, to_host
from .ops.geometry import IntOrPair, as_int, as_pair, check_eps
from .rng import as_generator

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
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "Flatten",
]


_M = TypeVar("_M", bound="Module")


class Parameter(Tensor):
    """A leaf tensor that a :class:`Module` registers and optimizers update."""

    __slots__ = ()

    def __init__(self, data: Any, dtype: Any = None) -> None:
        super().__init__(data, requires_grad=True, dtype=dtype)


def _registering(forward: Callable[..., Any]) -> Callable[..., Any]:
    """``forward``, telling a trace being recorded that this module ran: its attributes (the
    training flag among them) become guards of the plan, called directly or through
    ``__call__``."""

    @functools.wraps(forward)
    def wrapper(self: Module, *args: Any, **kwargs: Any) -> Any:
        if tracing.current is not None:
            tracing.current.module(self)
        return forward(self, *args, **kwargs)

    wrapper.registers = True  # type: ignore[attr-defined]
    return wrapper


class Module:
    """Base class: attributes that are Parameters or Modules are registered in order.

    Buffers (arrays of state that is saved but not trained) are declared with
    :meth:`register_buffer`; assigning a new array to a buffer's name replaces it.
    """

    # The registries, set in __init__ (around __setattr__, which fills them).
    _params: dict[str, Parameter]
    _modules: dict[str, Module]
    _buffers: dict[str, np.ndarray]
    training: bool

    def __new__(cls, *args: Any, **kwargs: Any) -> Module:
        module = super().__new__(cls)
        tracing.modules.add(module)
        return module

    def __init__(self) -> None:
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_params" not in self.__dict__:
            raise RuntimeError(f"call Module.__init__() in {type(self).__name__}.__init__ first")
        # counted among its attributes: a compiled step's guard sees any assignment
        self.__dict__["_writes"] = self.__dict__.get("_writes", 0) + 1
        if name in self._buffers:
            self._buffers[name] = namespace(value).asarray(value)
            object.__setattr__(self, name, self._buffers[name])
            return
        self._params.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: np.ndarray) -> None:
        """Keep ``value`` as state of this module: in ``state_dict``, not in ``parameters``."""
        self._params.pop(name, None)
        self._modules.pop(name, None)
        self._buffers[name] = namespace(value).asarray(value)
        object.__setattr__(self, name, self._buffers[name])

    def to(self: _M, device: str) -> _M:
        """Move every parameter and buffer to ``device`` (``"cpu"`` or ``"cuda"``), in place.

        The Parameter objects stay (an optimizer holding them follows: its state moves at
        its next step); their gradients are dropped. A missing CuPy or GPU raises
        :class:`~npgrad.errors.DeviceError` naming the extra to install.
        """
        for m in self.modules():
            for p in m._params.values():
                p.data = to_device(p.data, device)
                p.grad = None
            for name, b in m._buffers.items():
                m._buffers[name] = to_device(b, device)
                object.__setattr__(m, name, m._buffers[name])
        return self

    @property
    def device(self) -> str:
        """Where the parameters live (``"cpu"`` for a module without any)."""
        return next((p.device for p in self.parameters()), "cpu")

    def forward(self, *args: Any) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        forward = cls.forward  # through the MRO: a mixin's forward is wrapped here too
        if not getattr(forward, "registers", False):
            cls.forward = _registering(forward)  # type: ignore[method-assign]

    def __call__(self, *args: Any) -> Tensor:
        if tracing.current is not None:  # also when forward was set on the instance
            tracing.current.module(self)
        return self.forward(*args)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, p in self._params.items():
            yield prefix + name, p
        for name, m in self._modules.items():
            yield from m.named_parameters(f"{prefix}{name}.")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for name, b in self._buffers.items():
            yield prefix + name, b
        for name, m in self._modules.items():
            yield from m.named_buffers(f"{prefix}{name}.")

    def modules(self) -> Iterator[Module]:
        yield self
        for m in self._modules.values():
            yield from m.modules()

    @tracing.replayable
    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def train(self: _M, mode: bool = True) -> _M:
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self: _M) -> _M:
        return self.train(False)

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def num_buffer_values(self) -> int:
        """Values in buffers (batch norm's running statistics): stored, never trained."""
        return sum(b.size for _, b in self.named_buffers())

    def size_text(self) -> str:
        """The one way npgrad states a network's size: parameters, then buffers if any."""
        text = f"{self.num_parameters():,} parameters"
        buffers = self.num_buffer_values()
        return f"{text} + {buffers:,} buffer values" if buffers else text

    def set_rng(self, rng: np.random.Generator) -> None:
        """Draw every Dropout mask in this module from ``rng`` from now on."""
        for m in self.modules():
            if isinstance(m, Dropout):
                m.rng = rng

    def _state_arrays(self) -> dict[str, np.ndarray]:
        """The live arrays of every parameter and buffer, by dotted name."""
        own = {name: p.data for name, p in self.named_parameters()}
        own.update(self.named_buffers())
        return own

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer array by dotted name, on the host (NumPy)
        wherever the model lives: what checkpoints and exports hold."""
        return {name: host_copy(a) for name, a in self._state_arrays().items()}

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays into parameters and buffers, in place; mismatches raise
        :class:`CheckpointError`."""
        own = self._state_arrays()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        problems = []
        if missing and strict:
            problems.append(f"missing keys {missing}")
        if unexpected and strict:
            problems.append(f"unexpected keys {unexpected}")
        for name in sorted(set(own) & set(state)):
            v = state[name]
            shape = v.shape if is_ndarray(v) else np.shape(v)
            if tuple(shape) != own[name].shape:
                problems.append(f"{name} has shape {shape}, the model expects {own[name].shape}")
        if problems:
            raise CheckpointError("state does not fit the model: " + "; ".join(problems))
        for name in set(own) & set(state):
            own[name][...] = namespace(own[name]).asarray(to_host(state[name]))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._modules.items())
        return f"{type(self).__name__}({inner})"


def _init_weight(
    fan_in: int,
    fan_out: int,
    init: str,
    rng: np.random.Generator,
    dtype: Any,
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Weights of ``shape`` (default ``(fan_in, fan_out)``) scaled for those fans."""
    init = init.lower()
    shape = shape or (fan_in, fan_out)
    if init in ("he", "kaiming"):
        # Keeps the variance of ReLU activations constant from layer to layer.
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
    elif init in ("glorot", "xavier"):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-limit, limit, size=shape)
    elif init == "normal":  # the exercise's unscaled N(0, 1)
        w = rng.normal(size=shape)
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
        in_features = as_int(in_features, "Linear's in_features", 1)
        out_features = as_int(out_features, "Linear's out_features", 1)
        rng = as_generator(rng)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(_init_weight(in_features, out_features, init, rng, dtype))
        self.bias = Parameter(np.zeros(out_features, dtype=dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is None:
            return autodiff.matmul(x, self.weight)
        return autodiff.linear(x, self.weight, self.bias)

    def __repr__(self) -> str:
        return f"Linear({self.in_features}, {self.out_features}, bias={self.bias is not None})"


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return autodiff.relu(x)

    def __repr__(self) -> str:
        return "ReLU()"


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return autodiff.sigmoid(x)

    def __repr__(self) -> str:
        return "Sigmoid()"


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return autodiff.tanh(x)

    def __repr__(self) -> str:
        return "Tanh()"


class Dropout(Module):
    """Inverted dropout: in training, zero each unit with probability ``p`` and scale by 1/(1-p).

    The mask is drawn by the ``dropout`` op (:class:`npgrad.ops.dense.DropoutOp`), a
    fresh one on every call, also when a compiled step replays it.
    ``rng`` is the generator the masks are drawn from (the trainer shares its own
    so that checkpoints capture it).
    """

    def __init__(self, p: float = 0.5, rng: np.random.Generator | int | None = None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.rng = as_generator(rng)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        return autodiff.dropout(x, self.p, self.rng)

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
        rng = as_generator(rng)
        layers: list[Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(Linear(a, b, init=init, rng=rng, dtype=dtype))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
                if dropout > 0:
                    layers.append(Dropout(dropout, rng=rng))
        super().__init__(*layers)
        self.sizes = sizes


# --------------------------------------------------------------------------- convolutional


class Conv2d(Module):
    """2-D convolution over NCHW input, PyTorch's arguments: weight (out, in, kh, kw), bias (out,).

    He initialisation (the default, for ReLU networks) scales by the fan-in
    ``in * kh * kw``; Glorot also uses the fan-out ``out * kh * kw``. The bias
    starts at zero, as in :class:`Linear`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
        bias: bool = True,
        init: str = "he",
        rng: np.random.Generator | int | None = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        in_channels = as_int(in_channels, "Conv2d's in_channels", 1)
        out_channels = as_int(out_channels, "Conv2d's out_channels", 1)
        kh, kw = as_pair(kernel_size, "kernel size", 1)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kh, kw)
        # Checked now, so a bad architecture fails when built, not at the first batch.
        self.stride = as_pair(stride, "stride", 1)
        self.padding = as_pair(padding, "padding", 0)
        self.dilation = as_pair(dilation, "dilation", 1)
        fan_in, fan_out = in_channels * kh * kw, out_channels * kh * kw
        w = _init_weight(
            fan_in, fan_out, init, as_generator(rng), dtype, (out_channels, in_channels, kh, kw)
        )
        self.weight = Parameter(w)
        self.bias = Parameter(np.zeros(out_channels, dtype=dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return autodiff.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def __repr__(self) -> str:
        return (
            f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None})"
        )


class MaxPool2d(Module):
    """Max pooling; ``stride`` defaults to the kernel size (see :class:`npgrad.ops.conv.MaxPool2dOp`)."""

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.padding, self.dilation = padding, dilation

    def forward(self, x: Tensor) -> Tensor:
        return autodiff.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation)

    def __repr__(self) -> str:
        return f"MaxPool2d({self.kernel_size}, stride={self.stride}, padding={self.padding})"


class AvgPool2d(Module):
    """Average pooling (padding counts in the average, as PyTorch's default)."""

    def __init__(
        self, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return autodiff.avg_pool2d(x, self.kernel_size, self.stride, self.padding)

    def __repr__(self) -> str:
        return f"AvgPool2d({self.kernel_size}, stride={self.stride}, padding={self.padding})"


class _BatchNorm(Module):
    """Batch normalisation per channel (axis 1): learnable scale and shift, running statistics.

    In training mode the batch's own statistics normalise and the running
    mean and (unbiased) variance are updated with ``momentum`` as PyTorch does;
    in eval mode the running statistics normalise. ``running_mean`` and
    ``running_var`` are buffers: saved in ``state_dict``, never trained.
    """

    dims: tuple[int, ...] = ()
    # synchronised batch norm: a function adding an array up over the processes of a
    # data-parallel run (npgrad.distributed), set by the trainer for --sync-bn
    reduce: Any = None
    running_mean: np.ndarray  # buffers, registered in __init__
    running_var: np.ndarray

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, dtype: Any = np.float32
    ) -> None:
        super().__init__()
        num_features = as_int(num_features, f"{type(self).__name__}'s num_features", 1)
        check_eps(eps, "batch norm eps")
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"batch norm momentum must lie in [0, 1], got {momentum}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(np.ones(num_features, dtype=dtype))
        self.bias = Parameter(np.zeros(num_features, dtype=dtype))
        self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim not in self.dims or x.shape[1] != self.num_features:
            want = " or ".join(f"{d}-D" for d in self.dims)
            raise ShapeError(
                f"{type(self).__name__}({self.num_features}) expects {want} input with "
                f"{self.num_features} channels on axis 1, got shape {x.shape}"
            )
        return autodiff.batch_norm(
            x,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            training=self.training,
            momentum=self.momentum,
            eps=self.eps,
            reduce=self.reduce,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.num_features}, eps={self.eps}, momentum={self.momentum})"
        )


class BatchNorm1d(_BatchNorm):
    """Batch norm of ``(N, C)`` or ``(N, C, L)`` input, statistics over all but axis 1."""

    dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm of ``(N, C, H, W)`` input, statistics over ``(N, H, W)`` per channel."""

    dims = (4,)


class Flatten(Module):
    """Merge the axes from ``start_dim`` on (NCHW order, as PyTorch): ``(N, C, H, W) -> (N, CHW)``."""

    def __init__(self, start_dim: int = 1) -> None:
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x: Tensor) -> Tensor:
        return autodiff.flatten(x, self.start_dim)

    def __repr__(self) -> str:
        return f"Flatten(start_dim={self.start_dim})"
