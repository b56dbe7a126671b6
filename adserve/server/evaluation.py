"""The evaluation request: checked field by field, decoded, and hashed for the cache.

`parse` takes the plain data of an evaluation (JSON-decoded, or arrays from
another adapter) and returns an `Evaluation` of float64 arrays, or raises a
`ServiceError` whose message names the field. What only the function can
tell (input names, shapes, batch sizes, a scalar output) the engine checks.
Wherever a tensor is taken, `{"ref": R}` may stand for one the server holds
(held.py): `refs(R, where)` gives its array, or raises 404 `unknown_tensor`.
"""

import dataclasses
import hashlib
import re
from dataclasses import dataclass

import numpy as np

from .errors import UNPROCESSABLE, ServiceError
from .tensors import TensorError, decode, describe

FIELDS = ("inputs", "compute", "tangent", "cotangent", "batch", "wrt", "timeout_ms")
_REF = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Evaluation:
    inputs: dict
    compute: tuple   # distinct kinds, in the order asked
    tangent: dict | None
    cotangent: np.ndarray | None
    batch: bool
    wrt: tuple | None = None  # inputs to differentiate; None: all
    timeout_ms: int | None = None  # the caller's time limit (never part of the cache key)
    held: dict = dataclasses.field(default_factory=dict)  # where a held tensor stood ("inputs.A") -> its ref

    def cache_key(self, function_id: str) -> tuple:
        """Equal only for requests that must get equal results; arrays enter by shape and bytes, a held tensor
        by its ref (a content address already: its bytes are not read again, 8 MB took ~10 ms to hash). SHA-256,
        not BLAKE2: with the CPU's SHA extensions it hashes 8 MB in 6.7 ms where blake2b takes 13.8."""
        h = hashlib.sha256()
        held = self.held
        for section, tensors in (("inputs", self.inputs), ("tangent", self.tangent),
                                 ("cotangent", None if self.cotangent is None else {"": self.cotangent})):
            if tensors is None:
                continue
            h.update(f"|{section}:{len(tensors)}".encode())
            for name in sorted(tensors):
                ref = held.get(f"{section}.{name}" if name else section) if held else None
                if ref is not None:
                    h.update(f"|{len(name)}:{name}@{ref}".encode())  # "@", not a shape's "(": never a bytes entry
                    continue
                a = tensors[name]
                if not a.flags.c_contiguous:
                    a = np.ascontiguousarray(a)
                # a scalar's shape enters as (1,), as np.ascontiguousarray (ndim >= 1) made it: the same keys
                h.update(f"|{len(name)}:{name}{a.shape or (1,)}".encode())
                h.update(a)
        return function_id, tuple(sorted(self.compute)), self.batch, self.wrt, h.digest()


def _error(code: str, message: str) -> ServiceError:
    return ServiceError(UNPROCESSABLE, code, message)


def parse(body, kinds, refs=None) -> Evaluation:
    """Check an evaluation's fields and decode its tensors; `kinds` are the allowed compute names, `refs` gives
    the array of a held tensor's ref (None: refs are not taken)."""
    if not isinstance(body, dict):
        raise _error("invalid_evaluation", 'an evaluation must be a JSON object such as '
                                           '{"inputs": {"x": 1.0}, "compute": ["value", "gradient"]}')
    unknown = [k for k in body if k not in FIELDS]
    if unknown:
        raise _error("unknown_field", f"unknown field {unknown[0]!r} in the evaluation; "
                                      f"the fields are {', '.join(FIELDS)}")
    held = {}
    return Evaluation(
        inputs=tensor_map(body.get("inputs", {}), "inputs", refs, held),
        compute=_compute(body.get("compute", ["value"]), kinds),
        tangent=None if body.get("tangent") is None else tensor_map(body["tangent"], "tangent", refs, held),
        cotangent=None if body.get("cotangent") is None else _tensor(body["cotangent"], "cotangent", refs, held),
        batch=_batch(body.get("batch", False)),
        wrt=_wrt(body.get("wrt")),
        timeout_ms=_timeout_ms(body.get("timeout_ms")),
        held=held,
    )


def _tensor(value, where: str, refs=None, held=None) -> np.ndarray:
    """The tensor `value` at `where`; a held tensor's ref is noted in `held` (where -> ref), if given."""
    if isinstance(value, dict) and "ref" in value:
        array = _held(value, where, refs)
        if held is not None:
            held[where] = value["ref"]
        value = array
    try:
        return decode(value, where)
    except TensorError as e:
        raise _error("invalid_tensor", str(e)) from None


def _held(value: dict, where: str, refs) -> np.ndarray:
    ref = value["ref"]
    if len(value) != 1 or not isinstance(ref, str) or not _REF.fullmatch(ref):
        raise _error("invalid_tensor", f'{where} must be {{"ref": "<64 lowercase hex digits>"}} to name a held '
                                       f"tensor, not an object with {', '.join(map(repr, sorted(value)))[:200]}"
                                       + ("" if isinstance(ref, str) else f" (ref is {describe(ref)})"))
    if refs is None:
        raise _error("invalid_tensor", f"{where}: held tensors (refs) are not taken here")
    return refs(ref, where)


def tensor_map(value, field: str, refs=None, held=None) -> dict:
    if not isinstance(value, dict):
        raise _error("invalid_field", f"{field} must be an object from input name to tensor, not {describe(value)}")
    return {name: _tensor(v, f"{field}.{name}", refs, held) for name, v in value.items()}


def _compute(value, kinds) -> tuple:
    if not isinstance(value, list) or not value:
        raise _error("invalid_compute", f"compute must be a non-empty list of names from: {', '.join(kinds)}")
    for i, kind in enumerate(value):
        if kind not in kinds:
            raise _error("invalid_compute", f"compute[{i}] is {kind!r}, which is not one of: {', '.join(kinds)}")
    return tuple(dict.fromkeys(value))


def _wrt(value):
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _error("invalid_field", f"wrt must be a non-empty list of input names, not {describe(value)}")
    return tuple(sorted(set(value)))


def _timeout_ms(value):
    if value is None:
        return None
    if type(value) is not int or value <= 0:
        raise _error("invalid_field", f"timeout_ms must be a positive integer (milliseconds), not {describe(value)}"
                                      + (f" {value}" if type(value) in (int, float) else ""))
    return value


def _batch(value) -> bool:
    if not isinstance(value, bool):
        raise _error("invalid_field", f"batch must be true or false, not {describe(value)}")
    return value
