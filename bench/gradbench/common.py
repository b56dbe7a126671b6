"""What every GradBench eval module shares: a `Part` (one GradBench function: our definition and request beside a
JAX factory), an `Eval` (a named list of parts), input-spec and array helpers, and JAX (float64) set-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Part:
    function: str                   # GradBench's function name
    definition: dict
    compute: list
    inputs: dict
    out: Callable                   # our result dict -> the eval's output (array or tuple of arrays)
    jax: Callable                   # () -> zero-argument call of a fresh jitted JAX function, same output
    wrt: tuple | None = None
    tangent: dict | None = None
    batch: bool = False
    limits: dict | None = None       # Limits fields the definition needs over the defaults (a server's settings)


@dataclass
class Eval:
    name: str
    label: str
    parts: list = field(default_factory=list)
    params: dict = field(default_factory=dict)  # the generator's sizes and constants (for GradBench's own input)


def _inputs(**arrays) -> list:
    out = []
    for k, v in arrays.items():
        a = np.asarray(v)
        d = {"name": k, "shape": list(a.shape)}
        if a.dtype.kind in "iu":
            d["dtype"] = "int64"
        out.append(d)
    return out


def _f(**arrays) -> dict:
    return {k: (np.asarray(v, dtype=np.int64) if np.asarray(v).dtype.kind in "iu"
                else np.asarray(v, dtype=np.float64)) for k, v in arrays.items()}


def _jax():
    import jax
    jax.config.update("jax_enable_x64", True)
    return jax


def _fresh(core, *args, **statics):
    """A factory: each call jits a new closure of `core` (so nothing is cached from an earlier jit)."""
    def make():
        jax = _jax()
        fn = jax.jit(lambda *a: core(*a, **statics))
        dev = [jax.device_put(a) for a in args]
        return lambda: jax.block_until_ready(fn(*dev))
    return make
