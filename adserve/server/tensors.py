"""Tensors in JSON, both ways (the contract's "Tensors in JSON").

A JSON tensor is a number, a row-major nested list of numbers, or
`{"dtype": "float64", "shape": [...], "b64": "<base64 of little-endian bytes>"}` (or `"dtype": "int64"`
for an int64 input's integers);
the strings "NaN", "Infinity" and "-Infinity" stand for non-finite values
anywhere a number may. `decode` turns one into a float64 ndarray or raises
`TensorError` naming where it went wrong (`inputs.x[2][1]`); `encode` turns an
ndarray back into lists or the base64 form. Finite arrays are left as ndarrays
for `dumps`, which lets orjson write them without a Python-level walk.
"""

import base64
import binascii
import math

import numpy as np
import orjson

SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
MAX_DIMS = 32
_NUMBER_TYPES = frozenset({int, float})
_B64_KEYS = {"dtype", "shape", "b64"}
_B64_DTYPES = {"float64": "<f8", "int64": "<i8"}
TENSOR_TYPES = (np.ndarray, np.generic, float)  # leaves of a result that are tensors


class TensorError(ValueError):
    """A JSON value that is not a tensor; `where` is its path in the request."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where} {problem}")
        self.where = where
        self.problem = problem


def decode(value, where: str = "tensor") -> np.ndarray:
    """A JSON tensor (or an ndarray, passed through as float64) as a float64 ndarray."""
    if isinstance(value, np.ndarray):
        return np.asarray(value, dtype=np.float64)
    if isinstance(value, dict):
        return _decode_b64(value, where)
    if isinstance(value, list):
        return _decode_lists(value, where)
    return np.array(_number(value, where))


def is_b64(value) -> bool:
    return isinstance(value, dict) and "b64" in value


def encode(a, b64: bool = False):
    """An array as a JSON tensor: the base64 form if `b64`, else numbers and nested lists."""
    if not b64 and (type(a) is float or (type(a) is np.ndarray and a.ndim == 0) or isinstance(a, np.floating)):
        v = float(a)  # a scalar: no array ufuncs for one number (most results are scalars or small)
        return v if math.isfinite(v) else _special_name(v)
    a = np.asarray(a, dtype=np.float64)
    if b64:
        raw = np.ascontiguousarray(a, dtype="<f8").tobytes()
        return {"dtype": "float64", "shape": list(a.shape), "b64": base64.b64encode(raw).decode("ascii")}
    finite = bool(np.isfinite(a).all())
    if a.ndim == 0:
        v = float(a)
        return v if finite else _special_name(v)
    if finite:
        return np.ascontiguousarray(a)
    out = a.astype(object)
    out[np.isnan(a)] = "NaN"
    out[a == math.inf] = "Infinity"
    out[a == -math.inf] = "-Infinity"
    return out.tolist()


def encode_tree(tree, b64: bool = False):
    """Encode every tensor (array or float) in nested dicts and lists; other leaves stay as they are."""
    if isinstance(tree, dict):
        return {k: encode_tree(v, b64) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [encode_tree(v, b64) for v in tree]
    return encode(tree, b64) if isinstance(tree, TENSOR_TYPES) else tree


def dumps(obj) -> bytes:
    """JSON bytes of a structure that may hold arrays produced by `encode`."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def _special_name(v: float) -> str:
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


def describe(v) -> str:
    """A JSON value's kind, for messages: "a list of 3", "null", "the string 'x'"."""
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return f"the string {v[:40]!r}"
    if isinstance(v, list):
        return f"a list of {len(v)}"
    if isinstance(v, dict):
        return "an object"
    return "null" if v is None else type(v).__name__


def _number(v, where: str) -> float:
    if type(v) in _NUMBER_TYPES:
        return float(v)
    if isinstance(v, (np.floating, np.integer)):  # from adapters in process (a NumPy scalar is not JSON)
        return float(v)
    if isinstance(v, str) and v in SPECIAL:
        return SPECIAL[v]
    if isinstance(v, str):
        hint = 'only "NaN", "Infinity" and "-Infinity" may stand for numbers'
    elif isinstance(v, bool) or v is None:
        hint = "expected a number"
    elif isinstance(v, dict):
        hint = "a base64 tensor object stands only for a whole tensor, not inside a list"
    elif isinstance(v, list):
        hint = "expected a number here: nested lists must be rectangular"
    else:
        hint = "expected a number"
    raise TensorError(where, f"is {describe(v)}; {hint}")


def _decode_lists(value: list, where: str) -> np.ndarray:
    shape, node = [], value
    while isinstance(node, list):
        shape.append(len(node))
        if len(shape) > MAX_DIMS:
            raise TensorError(where, f"nests lists more than {MAX_DIMS} deep")
        if not node:
            break
        node = node[0]
    has_special = _check(value, tuple(shape), 0, where)
    if has_special:
        value = _replace_special(value)
    return np.array(value, dtype=np.float64).reshape(shape)


def _check(node, shape: tuple, depth: int, where: str) -> bool:
    """Raise at the first ragged list or non-number; say whether special strings occur."""
    if not isinstance(node, list) or len(node) != shape[depth]:
        raise TensorError(where, f"is {describe(node)} where a list of {shape[depth]} is expected "
                                 "(nested lists must be rectangular, shaped like their first elements)")
    if depth == len(shape) - 1:
        if _NUMBER_TYPES.issuperset(map(type, node)):
            return False
        for i, v in enumerate(node):
            _number(v, f"{where}[{i}]")
        return True
    special = False
    for i, child in enumerate(node):
        special |= _check(child, shape, depth + 1, f"{where}[{i}]")
    return special


def _replace_special(node):
    if isinstance(node, list):
        return [_replace_special(v) for v in node]
    return SPECIAL.get(node, node) if isinstance(node, str) else node


def _decode_b64(obj: dict, where: str) -> np.ndarray:
    if "b64" not in obj:
        raise TensorError(where, 'is an object but not a base64 tensor '
                                 '{"dtype": "float64", "shape": [...], "b64": "..."}')
    unknown = sorted(obj.keys() - _B64_KEYS)
    if unknown:
        raise TensorError(where, f"has unknown key(s) {', '.join(map(repr, unknown))}; "
                                 "a base64 tensor has dtype, shape and b64")
    dtype = obj.get("dtype")
    if not isinstance(dtype, str) or dtype not in _B64_DTYPES:
        raise TensorError(f"{where}.dtype", f'is {describe(dtype)}; "float64" or "int64" (for int64 inputs)')
    shape = obj.get("shape")
    if not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape):
        raise TensorError(f"{where}.shape", f"is {describe(shape)}; expected a list of non-negative integers")
    if len(shape) > MAX_DIMS:
        raise TensorError(f"{where}.shape", f"has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    data = obj["b64"]
    if not isinstance(data, str):
        raise TensorError(f"{where}.b64", f"is {describe(data)}; expected a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise TensorError(f"{where}.b64", f"is not valid base64 ({e})") from None
    need = 8 * math.prod(shape)
    if len(raw) != need:
        raise TensorError(f"{where}.b64", f"holds {len(raw)} bytes but shape {shape} needs {need} (8 per {dtype})")
    # float64: a read-only view of the decoded bytes, no copy (kernels take read-only inputs as they are);
    # int64 data travels as float64 values from here (exact to 2**53; the engine refuses larger ones by name)
    return np.frombuffer(raw, dtype=_B64_DTYPES[dtype]).astype(np.float64, copy=False).reshape(shape)
