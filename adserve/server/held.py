"""Tensors held by the server: uploaded once (`POST /v1/tensors`), then named by their ref in evaluations.

A ref is a content address: the SHA-256 (lowercase hex) of the tensor's
preimage, which is the ASCII text `<dtype>\\n<shape>\\n` followed by the
tensor's bytes, little-endian, row-major. `<dtype>` is `float64` or `int64`;
`<shape>` is the sizes joined by commas, empty for a scalar. So a 3x4 float64
tensor's preimage starts `b"float64\\n3,4\\n"` and has 96 bytes after it, and a
client can compute the ref itself.

Held tensors are scoped per tenant (tenancy.py): a tenant may use a ref only
if it uploaded that tensor. Each tenant's tensors are an LRU bounded by an
equal share of `capacity` bytes; arrays are kept read-only, without copies of
what was uploaded. With a `SharedStore` the preimage is also written to Redis
with a TTL (started again on every read), so every replica knows the ref; an
evicted or unknown ref is a 404 `unknown_tensor`, and the client uploads it
again.
"""

import hashlib
import math
import re

import numpy as np

from .cache import Shares
from .errors import NOT_FOUND, UNPROCESSABLE, ServiceError

DTYPES = {"float64": np.dtype("<f8"), "int64": np.dtype("<i8")}
REF = re.compile(r"[0-9a-f]{64}")
ARRAY_BYTES = 112  # an ndarray's own overhead, beside its data
DEFAULT_TTL = 86400


def preamble(dtype: str, shape) -> bytes:
    return f"{dtype}\n{','.join(str(int(d)) for d in shape)}\n".encode("ascii")


def ref_of(dtype: str, shape, data) -> str:
    """The ref of a tensor: `data` is its little-endian bytes (any buffer)."""
    h = hashlib.sha256(preamble(dtype, shape))
    h.update(data)
    return h.hexdigest()


def _dtype_name(a: np.ndarray) -> str | None:
    return next((name for name, dt in DTYPES.items() if a.dtype == dt), None)


def description(ref: str, a: np.ndarray) -> dict:
    return {"ref": ref, "shape": list(a.shape), "dtype": _dtype_name(a), "nbytes": int(a.nbytes)}


class HeldTensors:
    def __init__(self, capacity: int, tenants: int = 1, shared=None, ttl: int = DEFAULT_TTL):
        self._held = Shares(capacity, tenants, lambda a: a.nbytes + ARRAY_BYTES)
        self._shared, self.ttl = shared, ttl

    def put(self, tenant: str, array, owned: bool = False) -> dict:
        """Hold an array (float64 or int64; others become float64); its description with "ref".

        A writable array is copied unless `owned` (nobody else holds it); a read-only one is kept as it is."""
        a = np.asarray(array)
        if _dtype_name(a) is None:
            a, owned = a.astype(np.float64), True
        if not a.flags.c_contiguous:
            a, owned = np.ascontiguousarray(a), True
        if a.flags.writeable:
            a = a if owned else a.copy()
            a.setflags(write=False)
        dtype = _dtype_name(a)
        ref = ref_of(dtype, a.shape, memoryview(a).cast("B"))
        self._held.of(tenant).put(ref, a)
        if self._shared is not None:
            self._shared.put_tensor(tenant, ref, preamble(dtype, a.shape) + memoryview(a).cast("B").tobytes(),
                                    self.ttl)
        return description(ref, a)

    def put_bytes(self, tenant: str, data: bytes, shape, dtype: str) -> dict:
        """Hold raw little-endian bytes of `shape` and `dtype` (the octet-stream upload), without a copy."""
        if dtype not in DTYPES:
            raise ServiceError(UNPROCESSABLE, "invalid_tensor",
                               f"dtype is {dtype[:40]!r}; it must be one of {', '.join(DTYPES)}")
        need = DTYPES[dtype].itemsize * math.prod(shape)
        if len(data) != need:
            raise ServiceError(UNPROCESSABLE, "invalid_tensor",
                               f"the body holds {len(data)} bytes but shape {list(shape)} of {dtype} needs {need}")
        return self.put(tenant, np.frombuffer(data, dtype=DTYPES[dtype]).reshape(shape))

    def get(self, tenant: str, ref: str, where: str = "tensor") -> np.ndarray:
        """The read-only array of `ref`, or 404 `unknown_tensor`."""
        held = self._held.of(tenant)
        a = held.get(ref)
        if a is None and self._shared is not None:
            preimage = self._shared.get_tensor(tenant, ref, self.ttl)
            a = None if preimage is None else _from_preimage(preimage, ref)
            if a is not None:
                held.put(ref, a)
        if a is None:
            raise ServiceError(NOT_FOUND, "unknown_tensor",
                               f"{where}: no tensor held with ref {ref[:64]!r} (unknown, or evicted); "
                               "upload it again with POST /v1/tensors")
        return a

    def stats(self) -> dict:
        return {"held_tensors": len(self._held), "held_tensor_bytes": self._held.size}


def _from_preimage(preimage: bytes, ref: str) -> np.ndarray | None:
    """The array of a preimage read from Redis (a view of its bytes), None if it is not the ref's."""
    try:
        dtype_end = preimage.index(b"\n")
        shape_end = preimage.index(b"\n", dtype_end + 1)
        dtype = preimage[:dtype_end].decode("ascii")
        text = preimage[dtype_end + 1:shape_end].decode("ascii")
        shape = [int(d) for d in text.split(",")] if text else []
        data = memoryview(preimage)[shape_end + 1:]
        if dtype not in DTYPES or ref_of(dtype, shape, data) != ref:
            return None
        return np.frombuffer(data, dtype=DTYPES[dtype]).reshape(shape)
    except (ValueError, UnicodeDecodeError):
        return None
