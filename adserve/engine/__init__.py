"""The AD compiler: front ends -> IR -> transforms -> backends. No web code here."""

from . import arrays, control, primitives  # noqa: F401  (fill the primitive table)
