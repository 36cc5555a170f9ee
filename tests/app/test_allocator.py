"""npgrad.app.allocator: glibc's malloc thresholds, where there is a glibc."""

import platform

import pytest

from npgrad.app.allocator import keep_freed_memory


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_glibc_accepts_the_thresholds_and_a_second_call_is_harmless():
    assert keep_freed_memory() is True
    assert keep_freed_memory(32 << 20, 256 << 20) is True
