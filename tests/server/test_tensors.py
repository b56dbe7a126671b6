"""The JSON tensor codec: every accepted form, every refusal names where, and round trips."""

import base64
import math

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from adserve.server.tensors import TensorError, decode, dumps, encode, encode_tree, is_b64


def b64(a, shape=None, dtype="float64"):
    a = np.ascontiguousarray(a, dtype="<f8")
    return {"dtype": dtype, "shape": list(a.shape if shape is None else shape),
            "b64": base64.b64encode(a.tobytes()).decode()}


def wire(obj):
    """What a client would read: encode, then JSON text, then parse."""
    return orjson.loads(dumps(obj))


@pytest.mark.parametrize("value, want", [
    (2, np.array(2.0)),
    (2.5, np.array(2.5)),
    (-0.0, np.array(-0.0)),
    ([1, 2.5], np.array([1.0, 2.5])),
    ([[1, 2], [3, 4]], np.array([[1.0, 2.0], [3.0, 4.0]])),
    ([], np.zeros(0)),
    ([[], []], np.zeros((2, 0))),
    ("NaN", np.array(math.nan)),
    ("Infinity", np.array(math.inf)),
    ([["-Infinity", 1], [2, "NaN"]], np.array([[-math.inf, 1], [2, math.nan]])),
])
def test_decode_lists_and_numbers(value, want):
    got = decode(value, "x")
    assert got.dtype == np.float64 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_decode_b64():
    a = np.arange(6.0).reshape(2, 3) / 7
    got = decode(b64(a), "x")
    np.testing.assert_array_equal(got, a)
    assert got.dtype == np.float64 and got.flags.c_contiguous and got.flags.aligned
    # no copy: a read-only view of the decoded bytes (compiled kernels take read-only inputs as they are)
    assert not got.flags.writeable and not got.flags.owndata and isinstance(got.base.base, bytes)


def test_decode_b64_int64_as_float64():
    ints = np.array([[1, -2], [3, 2 ** 53]], dtype="<i8")
    got = decode({"dtype": "int64", "shape": [2, 2], "b64": base64.b64encode(ints.tobytes()).decode()}, "x")
    assert got.dtype == np.float64 and got.tolist() == [[1.0, -2.0], [3.0, 2.0 ** 53]]


def test_decode_passes_arrays_through_as_float64():
    got = decode(np.arange(3), "x")
    assert got.dtype == np.float64


@pytest.mark.parametrize("scalar", [np.float64(2.5), np.float32(2.5), np.int64(2), np.int32(2)])
def test_decode_takes_numpy_scalars(scalar):
    got = decode(scalar, "x")
    assert got.dtype == np.float64 and got.shape == () and got == float(scalar)


DEEP = 1
for _ in range(40):
    DEEP = [DEEP]


@pytest.mark.parametrize("value, where, words", [
    ([[1, 2], [3]], "inputs.x[1]", "list of 2"),
    ([[1, 2], 3], "inputs.x[1]", "list of 2"),
    ([1, [2]], "inputs.x[1]", "rectangular"),
    ([[1, 2], [3, True]], "inputs.x[1][1]", "boolean"),
    (True, "inputs.x", "boolean"),
    (None, "inputs.x", "null"),
    ([1, None], "inputs.x[1]", "null"),
    ([1, "nan"], "inputs.x[1]", '"NaN"'),
    ("1.5", "inputs.x", '"NaN"'),
    ([[0, {"b64": ""}]], "inputs.x[0][1]", "whole tensor"),
    ({"shape": [1]}, "inputs.x", "base64 tensor"),
    ({**b64([1.0]), "extra": 1}, "inputs.x", "'extra'"),
    (b64([1.0], dtype="float32"), "inputs.x.dtype", "float64"),
    ({"dtype": {}, "shape": [], "b64": ""}, "inputs.x.dtype", "float64"),
    ({"dtype": ["float64"], "shape": [], "b64": ""}, "inputs.x.dtype", "float64"),
    ({"dtype": "float64", "b64": "AAAAAAAA8D8="}, "inputs.x.shape", "non-negative integers"),
    (b64([1.0], shape=[-1]), "inputs.x.shape", "non-negative integers"),
    (b64([1.0], shape=[True]), "inputs.x.shape", "non-negative integers"),
    ({"dtype": "float64", "shape": [1], "b64": "not base64!"}, "inputs.x.b64", "base64"),
    ({"dtype": "float64", "shape": [1], "b64": 5}, "inputs.x.b64", "base64 string"),
    (b64([1.0, 2.0], shape=[3]), "inputs.x.b64", "16 bytes"),
    (DEEP, "inputs.x", "deep"),
])
def test_decode_refusals_say_where(value, where, words):
    with pytest.raises(TensorError) as e:
        decode(value, "inputs.x")
    assert e.value.where == where
    assert str(e.value).startswith(where + " ")
    assert words in str(e.value)


def test_encode_scalars_lists_and_specials():
    assert wire(encode(np.array(1.5))) == 1.5
    assert wire(encode(np.array([[1.0, 2.0]]))) == [[1.0, 2.0]]
    assert wire(encode(np.array([math.nan, math.inf, -math.inf, 0.5]))) == ["NaN", "Infinity", "-Infinity", 0.5]
    assert wire(encode(np.array(-math.inf))) == "-Infinity"
    assert wire(encode(np.zeros((2, 0)))) == [[], []]


def test_encode_non_contiguous_and_integer_arrays():
    a = np.arange(6.0).reshape(2, 3).T
    assert wire(encode(a)) == a.tolist()
    assert wire(encode(np.arange(3))) == [0.0, 1.0, 2.0]


def test_encode_b64_is_little_endian_float64():
    a = np.array([[1.0, math.nan], [-2.5, math.inf]])
    out = wire(encode(a, b64=True))
    assert out["dtype"] == "float64" and out["shape"] == [2, 2]
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(out["b64"]), "<f8").reshape(2, 2), a)


def test_encode_tree_keeps_nesting():
    tree = {"a": {"b": np.array(1.0)}, "c": np.array([2.0])}
    assert wire(encode_tree(tree)) == {"a": {"b": 1.0}, "c": [2.0]}
    assert is_b64(wire(encode_tree(tree, b64=True))["a"]["b"])


def test_encode_tree_leaves_plain_data_alone():
    tree = {"rows": [{"name": "v1", "shape": [2], "output": True, "value": np.array([1.0, math.nan])}],
            "cached": False, "scalar": 2.5}
    assert wire(encode_tree(tree)) == {"rows": [{"name": "v1", "shape": [2], "output": True,
                                                 "value": [1.0, "NaN"]}], "cached": False, "scalar": 2.5}
    encoded = wire(encode_tree(tree, b64=True))
    assert encoded["rows"][0]["shape"] == [2] and is_b64(encoded["rows"][0]["value"]) and is_b64(encoded["scalar"])


def test_is_b64():
    assert is_b64(b64([1.0])) and not is_b64([1.0]) and not is_b64({"x": 1.0}) and not is_b64(None)


finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=64)


# nested lists cannot tell [0, 3] from [0] (both are []), so list round trips use non-empty sides
@given(arrays(np.float64, array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4), elements=finite_or_not))
def test_round_trip_lists(a):
    back = decode(wire(encode(a)), "x")
    assert back.shape == a.shape
    np.testing.assert_array_equal(back, a)


@given(arrays(np.float64, array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4), elements=finite_or_not))
def test_round_trip_b64_is_bit_exact(a):
    back = decode(wire(encode(a, b64=True)), "x")
    assert back.shape == a.shape and back.tobytes() == a.tobytes()
