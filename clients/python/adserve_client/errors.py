"""Errors of the server as typed exceptions; `str(e)` is the server's message.

Both protocols map to the same classes: an HTTP status or a gRPC status code
picks the class; `code` is the server's snake_case code (`function_not_found`,
`shape_mismatch`, ...) and `location`, where the server gave one, says where
in a definition it went wrong.
"""


class AdserveError(Exception):
    """`retryable`: the server refused for now (a rate limit, the optimiser cap, shutting down, unreachable), and
    the same call may succeed later, `retry_after` seconds from now when the server said so. The clients retry
    these themselves (`retries=`); this is what is raised once their attempts are spent."""

    def __init__(self, message: str, code: str = "error", status=None, location=None, retry_after=None,
                 retryable: bool = False):
        super().__init__(message)
        self.message, self.code, self.status, self.location = message, code, status, location
        self.retry_after, self.retryable = retry_after, retryable


class InvalidArgument(AdserveError):
    """A malformed or wrong definition or request (HTTP 400, 422; gRPC INVALID_ARGUMENT)."""


class NotFound(AdserveError):
    """No function with that id (HTTP 404; gRPC NOT_FOUND)."""


class ResourceExhausted(AdserveError):
    """Over a size or rate limit (HTTP 413, 429; gRPC RESOURCE_EXHAUSTED)."""


class Unauthenticated(AdserveError):
    """Missing or bad API key (HTTP 401; gRPC UNAUTHENTICATED)."""


class DeadlineExceeded(AdserveError):
    """The call took longer than its timeout, or the computation ran past its time limit on the server
    (`timeout_ms`, or the server's own: HTTP 504; gRPC DEADLINE_EXCEEDED)."""


class Unavailable(AdserveError):
    """The server cannot be reached, is not ready, or is shutting down (HTTP 503; gRPC UNAVAILABLE): call again."""


HTTP = {400: InvalidArgument, 401: Unauthenticated, 404: NotFound, 413: ResourceExhausted, 422: InvalidArgument,
        429: ResourceExhausted, 503: Unavailable, 504: DeadlineExceeded}
GRPC = {"INVALID_ARGUMENT": InvalidArgument, "NOT_FOUND": NotFound, "RESOURCE_EXHAUSTED": ResourceExhausted,
        "UNAUTHENTICATED": Unauthenticated, "DEADLINE_EXCEEDED": DeadlineExceeded, "UNAVAILABLE": Unavailable}


RETRYABLE_HTTP = frozenset({429, 503})


def from_http(status: int, body, retry_after: float | None = None) -> AdserveError:
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        err = {"code": "http_error", "message": f"HTTP {status}: {str(body)[:300]}"}
    return HTTP.get(status, AdserveError)(err.get("message", ""), err.get("code", "error"), status,
                                          err.get("location"), retry_after, status in RETRYABLE_HTTP)
