"""adserve: automatic differentiation as a service.

`adserve.engine` is the AD compiler (no web code); `adserve.server` adapts it to
REST and gRPC through one service layer.
"""

__version__ = "0.1.0"
