"""The AD compiler: front ends -> IR -> transforms -> backends. No web code here.

`Engine` (engine.py) is its public face: one object owning a backend and limits, passed to whoever needs it.
"""

from . import primitives, arrays, indexing, control  # noqa: F401,I001  (fill the table; the docs list rows in this order)
from .engine import COMPUTE_KINDS, Engine, Function
from .limits import Limits
from .plans import main_plan

__all__ = ["COMPUTE_KINDS", "Engine", "Function", "Limits", "main_plan"]
