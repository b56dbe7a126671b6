"""Error kinds to protocol statuses: one table per protocol, and nowhere else.

Every `ServiceError` (and every engine error, which the service turns into
one) has a kind from `errors.KINDS`; `HTTP` and `GRPC` give each kind its
status. A protocol adapter answers an error with `http(e)` or `grpc_code(e)`;
peer protocols (their own error bodies) use the same tables.
`tests/server/test_status.py` checks that every error code the service and
the engine can raise reaches a status in both tables.
"""

import grpc

from .errors import (BAD_REQUEST, NOT_FOUND, RATE_LIMITED, TIMED_OUT, TOO_LARGE, UNAUTHENTICATED, UNAVAILABLE,
                     UNPROCESSABLE, ServiceError)

HTTP = {
    BAD_REQUEST: 400,
    NOT_FOUND: 404,
    TOO_LARGE: 413,
    UNPROCESSABLE: 422,
    UNAUTHENTICATED: 401,
    RATE_LIMITED: 429,
    UNAVAILABLE: 503,  # with Retry-After
    TIMED_OUT: 504,
}

GRPC = {
    BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    UNPROCESSABLE: grpc.StatusCode.INVALID_ARGUMENT,
    NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,  # with retry-after
    TIMED_OUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}

INTERNAL_MESSAGE = "internal error: this is a bug in the server, and it has been logged"


def http(error: ServiceError) -> int:
    return HTTP[error.kind]


def grpc_code(error: ServiceError) -> grpc.StatusCode:
    return GRPC[error.kind]
