"""npgrad.app.safetensors: the format as the reference implementation writes and reads it, and a
reader that refuses every malformed file with a SafetensorsError naming the defect."""

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as s
from hypothesis.extra import numpy as hnp

from npgrad.app import safetensors as st
from npgrad.errors import CheckpointError, SafetensorsError

reference = pytest.importorskip("safetensors.numpy")

DTYPES = [
    np.dtype(d) for d in ("f8", "f4", "f2", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "?")
]


def arrays():
    return s.sampled_from(DTYPES).flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    )


tensor_dicts = s.dictionaries(
    s.text(s.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8).filter(
        lambda k: k != "__metadata__"
    ),
    arrays(),
    max_size=5,
)


def same(a: dict, b: dict) -> None:
    assert list(a) == list(b) or sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k])


@settings(max_examples=60, deadline=None)
@given(tensor_dicts, s.dictionaries(s.text(max_size=5), s.text(max_size=5), max_size=3))
def test_round_trip_and_agreement_with_the_reference_implementation(tensors, metadata):
    blob = st.dumps(tensors, metadata)
    back, meta = st.loads(blob)
    same(back, tensors)
    assert list(back) == list(tensors)  # our own order kept
    assert meta == metadata
    same(reference.load(blob), tensors)  # the reference reads what we write
    same(st.loads(reference.save(tensors, metadata=metadata or None))[0], tensors)  # and back


def test_torch_reads_our_file(tmp_path, torch):
    from safetensors.torch import load_file

    tensors = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "n": np.array(7, dtype=np.int64),
        "mask": np.array([True, False]),
    }
    st.save(tmp_path / "t.safetensors", tensors, {"format": "pt"})
    loaded = load_file(tmp_path / "t.safetensors")
    for k, a in tensors.items():
        np.testing.assert_array_equal(loaded[k].numpy(), a)
        assert loaded[k].numpy().dtype == a.dtype


def test_big_endian_and_strided_arrays_are_written_little_endian_and_contiguous():
    a = np.arange(6, dtype=">f4").reshape(2, 3)
    blob = st.dumps({"be": a, "t": a.T})
    back, _ = st.loads(blob)
    assert back["be"].dtype == np.dtype("<f4")
    np.testing.assert_array_equal(back["be"], a)
    np.testing.assert_array_equal(back["t"], a.T)
    assert blob[8 + struct.unpack("<Q", blob[:8])[0] :][:8] == np.float32([0, 1]).tobytes()


def test_the_data_section_starts_8_byte_aligned():
    n = struct.unpack("<Q", st.dumps({"x": np.ones(3)})[:8])[0]
    assert n % 8 == 0


def test_loaded_arrays_are_writable_copies(tmp_path):
    st.save(tmp_path / "a.safetensors", {"x": np.zeros(3)})
    (x,) = st.load(tmp_path / "a.safetensors")[0].values()
    x[0] = 1  # not a read-only view of the file's bytes


def test_writer_refusals():
    with pytest.raises(SafetensorsError, match="has no safetensors dtype"):
        st.dumps({"x": np.array(["a"])})
    with pytest.raises(SafetensorsError, match="has no safetensors dtype"):
        st.dumps({"x": np.zeros(2, dtype=complex)})
    with pytest.raises(SafetensorsError, match="not allowed"):
        st.dumps({"__metadata__": np.zeros(2)})
    with pytest.raises(SafetensorsError, match="not allowed"):
        st.dumps({"": np.zeros(2)})
    with pytest.raises(SafetensorsError, match="must be strings"):
        st.dumps({"x": np.zeros(2)}, {"n": 3})


# --------------------------------------------------------------------------- the strict reader


def raw(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if length is None else length
    return struct.pack("<Q", n) + text + data


F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

MALFORMED = [
    (b"", "too short"),
    (b"\x01\x00\x00", "too short"),
    (raw(b"{}", length=0), "header length 0 is outside"),
    (raw(b"{}", length=st.MAX_HEADER + 1), "is outside 1.."),
    (raw(b"{}", length=50), "header length 50 is more than the 2 bytes after it"),
    (raw(b"{not json}"), "not valid UTF-8 JSON"),
    (raw(b'{"\xff": 1}'), "not valid UTF-8 JSON"),
    (raw([1, 2]), "JSON list, not an object"),
    (raw(b'{"a": {}, "a": {}}'), "key 'a' appears twice"),
    (raw({"__metadata__": {"k": 1}}), "__metadata__ must map strings to strings"),
    (raw({"__metadata__": "text"}), "__metadata__ must map strings to strings"),
    (raw({"__metadata__": []}), "__metadata__ must map strings to strings"),
    (raw({"__metadata__": 0}), "__metadata__ must map strings to strings"),
    (raw({"a": {**F32x2, "dtype": ["F32"]}}, bytes(8)), "dtype ['F32'] is not supported"),
    (raw({"a": {**F32x2, "dtype": {"F32": 1}}}, bytes(8)), "dtype {'F32': 1} is not supported"),
    (raw({"a": [1]}), "must have dtype, shape and data_offsets"),
    (
        raw({"a": {"dtype": "F32", "shape": [2]}}, bytes(8)),
        "must have dtype, shape and data_offsets",
    ),
    (raw({"a": {**F32x2, "dtype": "BF16"}}, bytes(8)), "dtype 'BF16' is not supported"),
    (raw({"a": {**F32x2, "shape": [-2]}}, bytes(8)), "not a list of non-negative integers"),
    (raw({"a": {**F32x2, "shape": [True, 2]}}, bytes(8)), "not a list of non-negative integers"),
    (raw({"a": {**F32x2, "shape": [2.0]}}, bytes(8)), "not a list of non-negative integers"),
    (raw({"a": {**F32x2, "shape": 2}}, bytes(8)), "not a list of non-negative integers"),
    (raw({"a": {**F32x2, "data_offsets": [0]}}, bytes(8)), "is not [begin, end]"),
    (raw({"a": {**F32x2, "data_offsets": [0, -8]}}, bytes(8)), "is not [begin, end]"),
    (raw({"a": {**F32x2, "data_offsets": [8, 0]}}, bytes(8)), "end before they begin"),
    (raw({"a": {**F32x2, "data_offsets": [0, 4]}}, bytes(8)), "hold 4 bytes, but shape [2]"),
    (raw({"a": {**F32x2, "shape": [2**40, 2**40]}}, bytes(8)), "needs 4835703278458516698824704"),
    (
        raw({"a": F32x2, "b": {**F32x2, "data_offsets": [4, 12]}}, bytes(12)),
        "tensor 'b' overlaps",
    ),
    (raw({"a": {**F32x2, "data_offsets": [4, 12]}}, bytes(12)), "4 unused bytes before tensor 'a'"),
    (raw({"a": F32x2}, bytes(7)), "need 8 bytes of data, the file has 7 (1 missing"),
    (raw({"a": F32x2}, bytes(9)), "(1 left over"),
    (raw({}, bytes(3)), "need 0 bytes of data, the file has 3"),
]


@pytest.mark.parametrize("blob, message", MALFORMED)
def test_malformed_files_are_refused_saying_what_is_wrong(blob, message, tmp_path):
    with pytest.raises(SafetensorsError) as info:
        st.loads(blob)
    assert message in str(info.value)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(SafetensorsError) as info:
        st.load(path)
    assert message in str(info.value) and str(path) in str(info.value)
    if len(blob) >= 8:  # the reference implementation refuses them too
        with pytest.raises(Exception):  # noqa: B017 - its error types vary by defect
            reference.load(blob)


def test_valid_edge_cases_are_accepted():
    zero = {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]}
    assert st.loads(raw({"a": zero, "b": {**zero}}))[0]["b"].shape == (0, 3)
    assert st.loads(raw({}))[0] == {}
    assert st.loads(raw({"__metadata__": None})) == ({}, {})  # null: none, as the reference reads
    # as the reference implementation: an empty name, and keys beyond the three, are allowed
    (a,) = st.loads(raw({"": {**F32x2, "extra": 1}}, bytes(8)))[0].values()
    assert a.shape == (2,)
    padded = json.dumps({"a": F32x2}).encode() + b"   "
    (a,) = st.loads(raw(padded, np.float32([1, 2]).tobytes()))[0].values()
    np.testing.assert_array_equal(a, [1, 2])


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(SafetensorsError, match="no such file"):
        st.load(tmp_path / "none.safetensors")
    with pytest.raises(SafetensorsError, match="is a directory"):
        st.load(tmp_path)
    assert issubclass(SafetensorsError, CheckpointError)


@settings(max_examples=200, deadline=None)
@given(s.data())
def test_damaged_files_raise_only_safetensors_errors(draw):
    good = st.dumps({"w": np.arange(6, dtype=np.float32), "b": np.ones(2)}, {"k": "v"})
    blob = bytearray(good)
    for _ in range(draw.draw(s.integers(1, 4))):
        i = draw.draw(s.integers(0, len(blob) - 1))
        blob[i] = draw.draw(s.integers(0, 255))
    cut = draw.draw(s.integers(0, len(blob)))
    try:
        tensors, _ = st.loads(bytes(blob[:cut]))
    except SafetensorsError:
        return
    assert sum(a.nbytes for a in tensors.values()) <= len(good)


json_values = s.recursive(
    s.none()
    | s.booleans()
    | s.integers()
    | s.sampled_from([0, 2, 4, 8, 2**64, 0.0, 8.0])
    | s.floats()
    | s.text(max_size=5)
    | s.sampled_from([*st.DTYPES, "BF16"]),
    lambda inner: (
        s.lists(inner, max_size=3) | s.dictionaries(s.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def entries():
    """Tensor entries, each field well-formed or JSON of any kind."""
    return (
        s.fixed_dictionaries(
            {
                "dtype": s.sampled_from([*st.DTYPES]) | json_values,
                "shape": s.lists(s.integers(0, 3), max_size=3) | json_values,
                "data_offsets": s.lists(s.integers(0, 16), min_size=2, max_size=2) | json_values,
            }
        )
        | json_values
    )


@settings(max_examples=300, deadline=None)
@given(
    s.dictionaries(s.text(max_size=3) | s.just("__metadata__"), entries(), max_size=3),
    s.binary(max_size=24),
)
def test_random_headers_raise_only_safetensors_errors(header, data):
    # JSON of every kind where the format wants a dtype name, a shape, offsets or metadata
    try:
        tensors, metadata = st.loads(raw(header, data))
    except SafetensorsError:
        return
    assert sum(a.nbytes for a in tensors.values()) == len(data)
    assert all(isinstance(v, str) for v in metadata.values())
