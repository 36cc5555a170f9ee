"""The op table on a device namespace: every op's forward and vjp on the CuPy stand-in.

``tests/fakecupy.py`` refuses every NumPy call on its arrays, so an op that still
calls ``np.`` on data (or mixes a host array into device code) fails here. NumPy
computes underneath, so the device results equal the host ones.
"""

import dataclasses

import numpy as np
import pytest

from npgrad.checking.gradcheck import all_ops, op_case
from npgrad.errors import DeviceError
from npgrad.ops import device
from tests import fakecupy

CASES = [(name, seed) for name in sorted(all_ops()) for seed in range(4)]


@pytest.fixture
def cuda():
    yield fakecupy.install()
    fakecupy.uninstall()


def on(xp, v):
    if isinstance(v, np.ndarray):
        return xp.asarray(v)
    if isinstance(v, tuple):
        return tuple(on(xp, u) for u in v)
    if dataclasses.is_dataclass(v):  # max pooling's routing: its index arrays
        return dataclasses.replace(
            v, **{f.name: on(xp, getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        )
    return v


def host(v):
    return v.get() if isinstance(v, fakecupy.ndarray) else v


@pytest.mark.parametrize("name,seed", CASES)
def test_every_op_runs_on_the_device_and_agrees_with_the_host(cuda, name, seed):
    op = all_ops()[name]
    case = op_case(name, np.random.default_rng(seed))
    out, saved = op.forward(*case.inputs, **case.params)
    dev_in = [cuda.asarray(a) for a in case.inputs]
    dev_params = {k: on(cuda, v) for k, v in case.params.items()}
    dev_out, dev_saved = op.forward(*dev_in, **dev_params)
    assert isinstance(dev_out, fakecupy.ndarray), f"{name} returned {type(dev_out).__name__}"
    np.testing.assert_allclose(dev_out.get(), out, rtol=1e-12, atol=1e-12)

    g = np.random.default_rng(seed + 100).standard_normal(np.shape(out))
    needs = (True,) * len(case.inputs)
    grads = op.vjp(saved, g, needs)
    dev_grads = op.vjp(dev_saved, cuda.asarray(g), needs)
    for i, (a, b) in enumerate(zip(grads, dev_grads)):
        assert (a is None) == (b is None)
        if a is not None:
            assert isinstance(b, fakecupy.ndarray), f"{name} input {i}: {type(b).__name__}"
            np.testing.assert_allclose(b.get(), a, rtol=1e-12, atol=1e-12)


def test_the_stand_in_refuses_numpy_calls_and_host_arrays(cuda):
    a = cuda.asarray(np.ones(3))
    with pytest.raises(TypeError):
        np.exp(a)
    with pytest.raises(TypeError):
        np.asarray(a)
    with pytest.raises(TypeError):
        np.empty_like(a)
    with pytest.raises(TypeError):
        a + np.ones(3)
    with pytest.raises(TypeError):
        a[np.array([0, 1])]
    assert isinstance(a.sum(), fakecupy.ndarray) and float(a.sum()) == 3.0
    assert not isinstance(cuda.random.default_rng(0), np.random.Generator)


def test_namespace_and_moves(cuda):
    x = np.arange(6.0).reshape(2, 3)
    d = device.to_device(x, "cuda")
    assert device.namespace(d) is cuda and device.namespace(x, 1.0) is np
    assert device.device_of(d) == "cuda" and device.device_of(x) == "cpu"
    back = device.to_host(d)
    assert isinstance(back, np.ndarray) and np.array_equal(back, x)
    assert device.to_device(d, "cuda") is d and device.to_device(x, "cpu") is x
    with pytest.raises(DeviceError, match="different devices"):
        device.same_device(x, d)


def test_a_missing_cupy_or_gpu_is_a_one_line_error_naming_the_extra(monkeypatch):
    device.unregister("cuda")

    def no_cupy(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(device.importlib, "import_module", no_cupy)
    with pytest.raises(DeviceError, match=r"pip install 'npgrad\[cuda12\]'") as info:
        device.module("cuda")
    assert "\n" not in str(info.value)
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        device.module("tpu")


def test_a_cupy_without_a_gpu_is_a_one_line_error(monkeypatch):
    device.unregister("cuda")

    class Runtime:
        @staticmethod
        def getDeviceCount():
            return 0

    fake = type("cupy", (), {"cuda": type("cuda", (), {"runtime": Runtime})})
    monkeypatch.setattr(device.importlib, "import_module", lambda name: fake)
    with pytest.raises(DeviceError, match="found no CUDA GPU"):
        device.module("cuda")


def test_device_draws_are_computed_there_the_same_bits_as_numpy_and_uniform(cuda):
    host = device.splitmix_uniform(np, 7, (300, 400))
    dev = device.splitmix_uniform(cuda, 7, (300, 400))
    assert isinstance(dev, fakecupy.ndarray) and dev.dtype == np.float32
    np.testing.assert_array_equal(dev.get(), host)
    assert 0.0 <= host.min() and host.max() < 1.0
    assert abs(host.mean() - 0.5) < 0.005 and abs(host.std() - 12**-0.5) < 0.005
    # neighbours independent, another seed another stream
    assert abs(np.corrcoef(host.ravel()[:-1], host.ravel()[1:])[0, 1]) < 0.01
    assert np.mean(host == device.splitmix_uniform(np, 8, (300, 400))) < 1e-3


def test_a_generator_gives_a_device_one_seed_and_an_int_seed_the_hosts_draws(cuda):
    rng, twin = np.random.default_rng(3), np.random.default_rng(3)
    u = device.uniform(rng, (4, 5), cuda)
    seed = int(twin.integers(2**63))  # the host stream advanced by exactly one seed
    np.testing.assert_array_equal(u.get(), device.splitmix_uniform(np, seed, (4, 5)))
    assert rng.bit_generator.state == twin.bit_generator.state
    np.testing.assert_array_equal(
        device.uniform(11, (4, 5), cuda).get(), np.random.default_rng(11).random((4, 5), np.float32)
    )
