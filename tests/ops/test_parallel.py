"""Threads for the element-wise passes: the same bits with any count, and the setting."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest

import npgrad
import npgrad.ops.conv
from npgrad import fpenv
from npgrad.checking.gradcheck import all_ops
from npgrad.errors import ConfigError
from npgrad.ops import parallel


@pytest.fixture
def cut_everything(monkeypatch):
    """Every pass cut, however small (the checks' arrays are far below MIN_BYTES)."""
    monkeypatch.setattr(parallel, "MIN_BYTES", 1)
    previous = parallel.set_threads(1)
    yield
    parallel.set_threads(previous)


def _run(op, arrays, params, g_seed):
    params = copy.deepcopy(params)  # batch norm updates its running statistics in place
    out, saved = op.forward(*[a.copy() for a in arrays], **params)
    g = np.random.default_rng(g_seed).standard_normal(np.shape(out))
    grads = op.vjp(saved, g, (True,) * len(arrays))
    return out, grads


# Shapes with a batch axis long enough to be cut, for the ops whose draws are small.
BIG = {
    "conv2d": ([(5, 3, 7, 6), (4, 3, 3, 3), (4,)], {"padding": 1, "stride": 1}),
    "conv2d_input_grad": ([(5, 4, 4, 3), (4, 3, 3, 3)], {"size": (7, 6), "padding": 1,
                                                         "stride": 2}),
    "conv2d_weight_grad": ([(5, 3, 7, 6), (5, 4, 4, 3)], {"kernel": (3, 3), "padding": 1,
                                                          "stride": 2}),
    "max_pool2d": ([(5, 3, 8, 6)], {"kernel": 3, "stride": 2, "padding": 1}),
    "avg_pool2d": ([(5, 3, 8, 6)], {"kernel": 2}),
    "batch_norm": ([(6, 3, 4, 5), (3,), (3,)], {"training": True}),
    "relu": ([(9, 4, 5)], {}),
}  # fmt: skip


# Cases of a second kind where the op's passes differ (pooling windows that tile, eval mode).
MORE = {
    "max_pool2d": ([(5, 3, 8, 6)], {"kernel": 2}),
    "batch_norm": ([(6, 3, 4, 5), (3,), (3,)], {"training": False, "running_mean": np.zeros(3),
                                                "running_var": np.full(3, 2.0)}),
}  # fmt: skip


def _cases(name):
    op = all_ops()[name]
    rng = np.random.default_rng(7)
    cases = [op.spec.sample(rng, (6, 5)) for _ in range(3)]
    for table in (BIG, MORE):
        if name in table:
            shapes, params = table[name]
            cases.append(([rng.standard_normal(s) for s in shapes], params))
    return op, cases


@pytest.mark.parametrize("name", sorted(all_ops()))
def test_every_op_gives_the_same_bits_with_any_number_of_threads(name, cut_everything):
    op, cases = _cases(name)
    for arrays, params in cases:
        parallel.set_threads(1)
        one = _run(op, arrays, params, 0)
        parallel.set_threads(3)
        three = _run(op, arrays, params, 0)
        np.testing.assert_array_equal(three[0], one[0], err_msg=f"{name} forward {params}")
        for a, b in zip(three[1], one[1]):
            if a is not None:
                np.testing.assert_array_equal(a, b, err_msg=f"{name} vjp {params}")


@pytest.mark.parametrize("name", sorted(all_ops()))
def test_every_op_gives_the_same_bits_a_block_of_rows_at_a_time(name, monkeypatch):
    """A pass of several sweeps runs a cache-sized block of rows at a time (BLOCK_BYTES):
    here one row per block, against the whole batch at once."""
    op, cases = _cases(name)
    for arrays, params in cases:
        monkeypatch.setattr(parallel, "BLOCK_BYTES", 1 << 40)
        whole = _run(op, arrays, params, 0)
        monkeypatch.setattr(parallel, "BLOCK_BYTES", 1)
        rows = _run(op, arrays, params, 0)
        np.testing.assert_array_equal(rows[0], whole[0], err_msg=f"{name} forward {params}")
        for a, b in zip(rows[1], whole[1]):
            if a is not None:
                np.testing.assert_array_equal(a, b, err_msg=f"{name} vjp {params}")


def test_a_pass_of_several_sweeps_runs_in_blocks_within_each_thread(monkeypatch):
    parts = []
    monkeypatch.setattr(parallel, "MIN_BYTES", 100)
    monkeypatch.setattr(parallel, "BLOCK_BYTES", 300)
    previous = parallel.set_threads(2)
    try:
        parallel.rows(lambda lo, hi: parts.append((lo, hi)), 10, 1000, passes=2)
        assert sorted(parts) == [(0, 3), (3, 5), (5, 8), (8, 10)]  # 3 rows a block, 2 threads
        parts.clear()
        parallel.rows(lambda lo, hi: parts.append((lo, hi)), 10, 1000)  # one sweep: no blocks
        assert sorted(parts) == [(0, 5), (5, 10)]
        parts.clear()
        parallel.rows(lambda lo, hi: parts.append((lo, hi)), 10, 200, passes=3)  # fits a block
        assert sorted(parts) == [(0, 5), (5, 10)]
    finally:
        parallel.set_threads(previous)


def test_a_large_pass_is_cut_into_one_part_per_thread(monkeypatch):
    parts = []
    monkeypatch.setattr(parallel, "MIN_BYTES", 100)
    previous = parallel.set_threads(3)
    try:
        parallel.rows(lambda lo, hi: parts.append((lo, hi)), 10, 1000)
        assert sorted(parts) == [(0, 3), (3, 6), (6, 10)]
        parts.clear()
        parallel.rows(lambda lo, hi: parts.append((lo, hi)), 10, 150)  # one part's worth
        assert parts == [(0, 10)]
    finally:
        parallel.set_threads(previous)


def test_a_part_that_cuts_again_runs_serially_and_errors_reach_the_caller(monkeypatch):
    monkeypatch.setattr(parallel, "MIN_BYTES", 1)
    previous = parallel.set_threads(2)
    seen = []

    def inner(lo, hi):
        seen.append(threading.current_thread().name)

    def outer(lo, hi):
        parallel.rows(inner, 4, 100)  # inside a part: no new parts, no deadlock

    def fails(lo, hi):
        if lo > 0:
            raise ValueError("part two")

    try:
        parallel.rows(outer, 2, 100)
        assert len(seen) == 2  # one serial call per outer part
        with pytest.raises(ValueError, match="part two"):
            parallel.rows(fails, 2, 100)
    finally:
        parallel.set_threads(previous)


def test_the_setting_is_process_wide_and_checked(monkeypatch):
    previous = npgrad.set_threads(2)
    try:
        assert npgrad.get_threads() == 2
        for bad in (0, -1, 1.5, "2", True):
            with pytest.raises(ConfigError, match="at least 1"):
                npgrad.set_threads(bad)
        monkeypatch.setenv("NPGRAD_THREADS", "3")
        assert npgrad.set_threads(None) == 2 and npgrad.get_threads() == 3
        monkeypatch.setenv("NPGRAD_THREADS", "many")
        assert parallel.default_threads() == 1
    finally:
        npgrad.set_threads(previous)


def test_threads_leave_a_compiled_cnn_step_bit_equal(monkeypatch):
    monkeypatch.setattr(parallel, "MIN_BYTES", 1)
    x = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)
    y = np.arange(6) % 3
    results = []
    for threads in (1, 2):
        previous = npgrad.set_threads(threads)
        try:
            net = npgrad.nn.Sequential(
                npgrad.nn.Conv2d(1, 4, 3, padding=1, rng=0), npgrad.nn.BatchNorm2d(4),
                npgrad.nn.ReLU(), npgrad.nn.MaxPool2d(2), npgrad.nn.Flatten(),
                npgrad.nn.Linear(64, 3, rng=0),
            )  # fmt: skip
            opt = npgrad.optim.Adam(net.parameters(), 1e-2)

            def step(xb, yb, net=net, opt=opt):
                loss = npgrad.cross_entropy(net(npgrad.tensor(xb)), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                return loss

            compiled = npgrad.compile(step)
            losses = [float(compiled(x, y).data) for _ in range(3)]
            results.append((losses, [p.data.copy() for p in net.parameters()]))
        finally:
            npgrad.set_threads(previous)
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not fpenv.available(), reason="no flush-to-zero control on this platform")
def test_a_worker_thread_computes_in_its_callers_subnormal_mode(cut_everything):
    """The mode is each thread's own: a pass cut across threads must not flush one part
    and keep the other (other bits with other thread counts)."""
    tiny = np.full((4, 8), 1e-39, dtype=np.float32)  # subnormal
    out = np.empty_like(tiny)
    parallel.set_threads(2)
    for flush in (True, False, True):
        with fpenv.flushed_denormals(flush):
            parallel.ufunc(np.multiply, tiny, np.float32(1.0), out=out)
        bits = out.view(np.uint32)
        assert (bits == 0).all() if flush else (bits == tiny.view(np.uint32)).all()
    assert not fpenv.denormals_flushed()


def test_a_device_array_is_never_run_in_blocks(cut_everything, monkeypatch):
    """A device runs each kernel over the whole array: a block of rows at a time (or a host
    thread per part) would only launch more kernels."""
    from tests import fakecupy

    xp = fakecupy.install()
    try:
        parallel.set_threads(3)
        monkeypatch.setattr(parallel, "BLOCK_BYTES", 1)
        calls = []
        rows = parallel.rows
        monkeypatch.setattr(
            parallel,
            "rows",
            lambda fn, n, nbytes, passes=1: (calls.append(passes), rows(fn, n, nbytes, passes)),
        )
        x = xp.asarray(np.random.default_rng(0).standard_normal((6, 3, 4, 5)))
        gamma, beta = xp.asarray(np.ones(3)), xp.asarray(np.zeros(3))
        y, saved = npgrad.ops.conv.BatchNormOp.forward(x, gamma, beta)
        npgrad.ops.conv.BatchNormOp.vjp(saved, y)
        npgrad.ops.conv.MaxPool2dOp.forward(x, kernel=2)
        _, routing = npgrad.ops.conv.MaxPool2dOp.forward(x, kernel=3, stride=2, padding=1)
        npgrad.ops.conv.MaxPool2dScatterOp.forward(xp.asarray(np.ones((6, 3, 2, 3))), routing)
        assert calls == []  # never handed to the host's threads or blocks
    finally:
        fakecupy.uninstall()
