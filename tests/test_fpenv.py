"""npgrad.fpenv: the calling thread's flush-to-zero modes, set and restored."""

import numpy as np
import pytest

from npgrad import fpenv
from npgrad.errors import ConfigError

needs_modes = pytest.mark.skipif(not fpenv.available(), reason="no FTZ control on this platform")


@needs_modes
def test_subnormals_are_flushed_inside_and_kept_outside():
    subnormal = np.array([1e-39], dtype=np.float32)  # below float32's smallest normal 1.2e-38
    tiny = np.array([1e-30], dtype=np.float32)
    assert not fpenv.denormals_flushed()
    assert (subnormal * np.float32(1))[0] == np.float32(1e-39)
    normal = (tiny * np.float32(1e-5))[0]
    with fpenv.flushed_denormals():
        assert fpenv.denormals_flushed()
        assert (subnormal * np.float32(1))[0] == 0  # a subnormal input counts as 0 (DAZ)
        assert (tiny * np.float32(1e-10))[0] == 0  # a subnormal result becomes 0 (FTZ)
        assert (tiny * np.float32(1e-5))[0] == normal  # normal values untouched
    assert not fpenv.denormals_flushed()
    assert (tiny * np.float32(1e-10))[0] > 0  # subnormal again


@needs_modes
def test_the_previous_state_comes_back_even_after_an_error():
    assert fpenv.flush_denormals(True) is False
    try:
        assert fpenv.flush_denormals(True) is True  # already on: says so
        with pytest.raises(RuntimeError), fpenv.flushed_denormals(False):
            assert not fpenv.denormals_flushed()
            raise RuntimeError("inside")
        assert fpenv.denormals_flushed()  # back to on, as before the block
    finally:
        fpenv.flush_denormals(False)
    assert not fpenv.denormals_flushed()


def test_an_unsupported_platform_says_so_in_one_line(monkeypatch):
    monkeypatch.setattr(fpenv, "_layout", lambda: None)
    assert not fpenv.available() and not fpenv.denormals_flushed()
    with pytest.raises(ConfigError, match="flushing subnormals is not supported on"):
        fpenv.flush_denormals()


@needs_modes
def test_a_mode_with_one_of_its_bits_set_comes_back_as_it_was():
    """A caller that set one mode bit alone (FTZ without DAZ, say) gets exactly that back."""
    layout = fpenv._layout()
    assert layout is not None
    one = layout[2] & -layout[2]  # the lowest of the mode's bits
    if one == layout[2]:
        pytest.skip("the mode is one bit on this platform (AArch64's FZ)")
    fpenv._set_bits(one)
    try:
        assert not fpenv.denormals_flushed()  # not both: not flushing as npgrad means it
        with fpenv.flushed_denormals():
            assert fpenv.denormals_flushed()
        assert fpenv._bits() == one
    finally:
        fpenv._set_bits(0)
    assert fpenv._bits() == 0


def test_flushing_where_the_platform_has_no_modes_is_no_error(monkeypatch):
    monkeypatch.setattr(fpenv, "_layout", lambda: None)
    with fpenv.flushing():
        assert not fpenv.denormals_flushed()
