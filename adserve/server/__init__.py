"""Adapters that put the engine on the network.

`service.Service` is the one object holding the registry and the result cache,
with plain data in and out; `rest` (and later gRPC) only translate to it.
"""
