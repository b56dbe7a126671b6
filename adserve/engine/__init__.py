"""The AD compiler: front ends -> IR -> transforms -> backends. No web code here.

`Engine` (engine.py) is its public face: one object owning a backend and limits, passed to whoever needs it.
"""

from . import arrays, control, primitives  # noqa: F401  (fill the primitive table)
from .engine import COMPUTE_KINDS, Engine, Function
from .limits import Limits
from .plans import main_plan

__all__ = ["COMPUTE_KINDS", "Engine", "Function", "Limits", "main_plan"]
