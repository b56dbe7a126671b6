"""What the calls give back, the same over REST and gRPC, and helpers to write definitions.

Tensors are float64 `numpy.ndarray`s (a scalar is a 0-d array).
"""

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FunctionInfo:
    id: str
    inputs: list  # [{"name": str, "shape": [int, ...]} (and "dtype": "int64" for integer data), ...] in order
    output_shape: tuple
    n_nodes: int
    created: bool | None = None  # whether this call registered it (None: not known)
    name: str | None = None  # the name that points at it, if any


@dataclass(frozen=True)
class FunctionPage:
    """One page of `list_functions`: `next`, when set, is the `after` of the next page."""

    functions: list  # [FunctionInfo, ...] in id order
    next: str | None = None


@dataclass(frozen=True)
class HeldTensor:
    """A tensor the server holds (`put_tensor`); `{"ref": held.ref}`, or `held.tensor`, stands for it in
    inputs, tangent and cotangent."""

    ref: str
    shape: tuple
    dtype: str
    nbytes: int

    @property
    def tensor(self) -> dict:
        return {"ref": self.ref}


@dataclass(frozen=True)
class Result:
    """Only what was asked for is set; `gradient`, `vjp`, `hvp`, `jacobian` map input names to
    arrays, `hessian[a][b]` is the block for inputs a and b."""

    value: np.ndarray | None = None
    gradient: dict | None = None
    jvp: np.ndarray | None = None
    vjp: dict | None = None
    hvp: dict | None = None
    jacobian: dict | None = None
    hessian: dict | None = None
    trace: list | None = None
    cached: bool = False


@dataclass(frozen=True)
class Progress:
    """One iterate of a server-side minimisation; iteration 0 is x0, the last has `done` set."""

    iteration: int
    x: dict = field(repr=False)
    value: float
    grad_norm: float  # the largest absolute gradient component at x
    done: bool = False
    message: str = ""
    success: bool = False


def expr(text: str, **shapes) -> dict:
    """A definition from one expression; keyword arguments name the inputs, in order, with their shapes:
    `expr("sum(x * y)", x=3, y=[3])`, `expr("log(a) * b", a=[], b=[])`."""
    return {"inputs": _inputs(shapes), "expr": text}


def program(source: str, **shapes) -> dict:
    """A definition from the source of `def f(...): ...`; keyword arguments as for `expr`."""
    return {"inputs": _inputs(shapes), "program": source}


def _inputs(shapes: dict) -> list:
    """A shape is a list or tuple of sizes (`[]` for a scalar), or one int for a vector."""
    return [{"name": n, "shape": [int(d) for d in ((s,) if isinstance(s, int) else s)]} for n, s in shapes.items()]
