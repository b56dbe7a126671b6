"""The client's version: a copy of the server's (adserve/__init__.py), kept equal by scripts/version.py."""

__version__ = "0.1.0"
