"""adserve's Python client: NumPy in and out, over REST (`Client`, `AsyncClient`) or gRPC (`GrpcClient`,
`AsyncGrpcClient`).

    from adserve_client import Client, expr
    with Client("http://127.0.0.1:8000") as c:
        f = c.register(expr("sum(x * x)", x=[3]))
        c.evaluate(f, {"x": [1.0, 2.0, 3.0]}, compute=["value", "gradient"]).gradient["x"]

Errors of the server are raised as `AdserveError` subclasses carrying its message.
"""

from ._version import __version__
from .errors import (AdserveError, DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted, Unauthenticated,
                     Unavailable)
from .rest import AsyncClient, Client
from .retry import Retry
from .rpc import AsyncEvaluationStream, AsyncGrpcClient, EvaluationStream, GrpcClient
from .types import FunctionInfo, FunctionPage, HeldTensor, Progress, Result, expr, program

__all__ = ["Client", "AsyncClient", "GrpcClient", "AsyncGrpcClient", "EvaluationStream", "AsyncEvaluationStream", "Retry",
           "FunctionInfo", "FunctionPage", "HeldTensor", "Result", "Progress", "expr", "program", "AdserveError", "InvalidArgument", "NotFound",
           "ResourceExhausted", "Unauthenticated", "DeadlineExceeded", "Unavailable", "__version__"]
