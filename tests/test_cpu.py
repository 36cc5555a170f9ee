"""npgrad.cpu: the worker threads of the large image ops, and the ops run on them."""

import multiprocessing
import sys
import threading

import numpy as np
import pytest

from npgrad import cpu, ops_conv
from npgrad.errors import ConfigError
from npgrad.ops_conv import Conv2d, Conv2dInputGrad, Conv2dWeightGrad, MaxPool2d, MaxPool2dScatter

needs_openblas = pytest.mark.skipif(
    cpu._BLAS.functions() is None, reason="no OpenBLAS thread count to set (not NumPy's wheels)"
)


@pytest.fixture
def threads(monkeypatch):
    """Two threads, and slices and patch chunks of any size, so that small test arrays take
    the parallel path, several chunks to a slice."""
    if cpu._BLAS.functions() is None:
        pytest.skip("no OpenBLAS thread count to set (not NumPy's wheels)")
    before = cpu.num_threads()
    monkeypatch.setattr(cpu, "MIN_PART_BYTES", 1)
    monkeypatch.setattr(ops_conv, "CHUNK_BYTES", 3000)
    cpu.set_num_threads(2)
    with cpu.image_threads() as active:
        assert active
        yield
    cpu.set_num_threads(before)


def test_slices_cover_the_range_in_order_on_two_threads(threads):
    seen = []

    def work(lo, hi):
        seen.append(threading.current_thread().name)
        return list(range(lo, hi))

    parts = cpu.parallel(work, 7, nbytes=1 << 30)
    assert len(parts) == 2 and sum(parts, []) == list(range(7))
    assert len(set(seen)) == 2  # the calling thread and one worker


def test_one_thread_small_jobs_nested_calls_and_jobs_outside_the_block_run_whole(
    threads, monkeypatch
):
    assert cpu.parallel(lambda lo, hi: (lo, hi), 1, 1 << 30) == [(0, 1)]
    inner = cpu.parallel(lambda lo, hi: cpu.parallel(lambda a, b: (a, b), 10, 1 << 30), 4, 1 << 30)
    assert inner == [[(0, 10)], [(0, 10)]]
    monkeypatch.setattr(cpu, "MIN_PART_BYTES", 1 << 20)
    assert cpu.parallel(lambda lo, hi: (lo, hi), 100, 1 << 19) == [(0, 100)]
    cpu.set_num_threads(1)
    assert cpu.parallel(lambda lo, hi: (lo, hi), 100, 1 << 30) == [(0, 100)]


def test_jobs_outside_image_threads_run_whole(monkeypatch):
    monkeypatch.setattr(cpu, "MIN_PART_BYTES", 1)
    assert cpu.parallel(lambda lo, hi: (lo, hi), 100, 1 << 30) == [(0, 100)]


def test_a_failing_slice_is_raised_after_every_slice_ended(threads):
    done = []

    def work(lo, hi):
        if lo == 0:
            raise ValueError("first slice")
        done.append(hi)

    with pytest.raises(ValueError, match="first slice"):
        cpu.parallel(work, 4, 1 << 30)
    assert done == [4]  # the worker's slice finished before the error came out

    def worker_fails(lo, hi):
        if lo:
            raise KeyError("second slice")
        return hi

    with pytest.raises(KeyError, match="second slice"):
        cpu.parallel(worker_fails, 4, 1 << 30)


def test_threads_outside_a_block_do_not_split_while_another_is_inside(threads):
    got = []
    t = threading.Thread(
        target=lambda: got.append(cpu.parallel(lambda lo, hi: (lo, hi), 10, 1 << 30))
    )
    t.start()
    t.join()
    assert got == [[(0, 10)]]
    assert cpu.parallel(lambda lo, hi: (lo, hi), 10, 1 << 30) == [(0, 5), (5, 10)]


@pytest.mark.parametrize("n", [0, -1, True, 1.5, "2", None])
def test_set_num_threads_refuses_what_is_not_a_positive_int(n):
    with pytest.raises(ConfigError, match="positive integer"):
        cpu.set_num_threads(n)


def test_default_follows_the_thread_limits_in_the_environment(monkeypatch):
    for var in ("NPGRAD_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu._default_threads() == 1
    monkeypatch.setenv("NPGRAD_NUM_THREADS", "3")
    assert cpu._default_threads() == 3
    for bad in ("zero", "0", "-2", ""):
        monkeypatch.setenv("NPGRAD_NUM_THREADS", bad)
        with pytest.raises(ConfigError, match="NPGRAD_NUM_THREADS must be a positive integer"):
            cpu._default_threads()


@needs_openblas
def test_openblas_multiplies_on_one_thread_inside_the_block_and_on_its_own_after():
    get, _ = cpu._BLAS.functions()
    before_threads, before_blas = cpu.num_threads(), get()
    if before_blas < 2:
        pytest.skip("BLAS runs on one thread here anyway")
    cpu.set_num_threads(2)
    try:
        with cpu.image_threads() as active:
            assert active and get() == 1
            with cpu.image_threads():
                assert get() == 1
            assert get() == 1  # an inner block leaves it to the outer one
        assert get() == before_blas
        # also when the block ends in an exception
        with pytest.raises(RuntimeError), cpu.image_threads():
            raise RuntimeError("in the block")
        assert get() == before_blas
        # the trainer's figures depend on it: BLAS gives other last bits on one thread
        cpu.set_num_threads(1)
        with cpu.image_threads() as active:
            assert not active and get() == before_blas
    finally:
        cpu.set_num_threads(before_threads)


@pytest.mark.skipif(sys.platform != "linux", reason="NumPy's wheels ship OpenBLAS on Linux")
def test_numpys_openblas_is_found_on_linux():
    assert cpu._BLAS.functions() is not None, "without it, convolutions cannot use the threads"


def _conv_case(rng, n=6, c=3, o=4, size=9, k=3):
    # channels-last memory behind NCHW views, as npgrad's own activations are
    x = rng.standard_normal((n, size, size, c)).transpose(0, 3, 1, 2)
    w = rng.standard_normal((o, c, k, k))
    return x, w, rng.standard_normal(o)


def _both(fn):
    """``fn()`` on two threads (the fixture's setting) and on one."""
    parallel = fn()
    before = cpu.num_threads()
    cpu.set_num_threads(1)
    try:
        return parallel, fn()
    finally:
        cpu.set_num_threads(before)


@pytest.mark.parametrize(
    "geometry",
    [{"padding": 1}, {"stride": 2, "padding": (1, 0)}, {"stride": (1, 2), "dilation": 2}],
)
def test_convolution_on_two_threads_equals_one(threads, geometry):
    rng = np.random.default_rng(0)
    x, w, b = _conv_case(rng)
    y2, y1 = _both(lambda: Conv2d.forward(x, w, b, **geometry)[0])
    np.testing.assert_allclose(y2, y1, rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(y1.shape)
    gx2, gx1 = _both(lambda: Conv2dInputGrad.forward(g, w, size=x.shape[2:], **geometry)[0])
    np.testing.assert_allclose(gx2, gx1, rtol=1e-12, atol=1e-12)
    # the weight gradient adds the slices' sums: equal up to the order of the additions
    gw2, gw1 = _both(lambda: Conv2dWeightGrad.forward(x, g, kernel=w.shape[2:], **geometry)[0])
    np.testing.assert_allclose(gw2, gw1, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "params", [{"kernel": 2}, {"kernel": 3, "stride": 2, "padding": 1}, {"kernel": (2, 3)}]
)
def test_max_pooling_on_two_threads_equals_one(threads, params):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 9, 9, 3))
    x[:, :3] = np.round(x[:, :3])  # ties
    x[1, 4, 4, 0] = np.nan
    x = x.transpose(0, 3, 1, 2)
    (y2, r2), (y1, r1) = _both(lambda: MaxPool2d.forward(x, **params))
    np.testing.assert_array_equal(y2, y1)
    np.testing.assert_array_equal(r2.flat(), r1.flat())
    g = rng.standard_normal(y1.shape)
    gx2, gx1 = _both(lambda: MaxPool2dScatter.forward(g, routing=r1)[0])
    np.testing.assert_array_equal(gx2, gx1)


def _conv_in_child(queue):
    rng = np.random.default_rng(0)
    x, w, b = _conv_case(rng)
    queue.put(float(Conv2d.forward(x, w, b, padding=1)[0].sum()))


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
)
def test_a_forked_child_gets_workers_of_its_own(threads):
    rng = np.random.default_rng(0)
    x, w, b = _conv_case(rng)
    expected = float(Conv2d.forward(x, w, b, padding=1)[0].sum())  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_conv_in_child, args=(queue,))
    child.start()
    got = queue.get(timeout=60)
    child.join(60)
    assert child.exitcode == 0
    assert got == pytest.approx(expected, rel=1e-12)
