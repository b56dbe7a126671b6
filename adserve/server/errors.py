"""Domain errors of the service layer, free of any protocol.

A `ServiceError` has a `kind` (what went wrong, for the status mapping), a
snake_case `code`, a `message` for a person and an optional `location`.
Each adapter maps kinds to its protocol's status in one table.
"""

BAD_REQUEST = "bad_request"      # the body is not JSON or not readable
NOT_FOUND = "not_found"          # no such function id
TOO_LARGE = "too_large"          # over a size limit
UNPROCESSABLE = "unprocessable"  # well-formed, but a wrong definition or evaluation
UNAUTHENTICATED = "unauthenticated"  # missing or bad API key (when keys are configured)
RATE_LIMITED = "rate_limited"    # over the client's rate limit
TIMED_OUT = "timed_out"          # the evaluation ran past its deadline and was stopped
UNAVAILABLE = "unavailable"      # stopped by the server's shutdown (call again: another replica answers)

MAX_MESSAGE = 2000
KINDS = (BAD_REQUEST, NOT_FOUND, TOO_LARGE, UNPROCESSABLE, UNAUTHENTICATED, RATE_LIMITED, TIMED_OUT, UNAVAILABLE)


class ServiceError(Exception):
    def __init__(self, kind: str, code: str, message: str, location=None):
        assert kind in KINDS, kind
        if len(message) > MAX_MESSAGE:  # every echo of client text is clipped; this bounds what is left
            message = message[:MAX_MESSAGE] + "..."
        super().__init__(message)
        self.kind, self.code, self.message, self.location = kind, code, message, location

    def body(self) -> dict:
        return error_body(self.code, self.message, self.location)


RETRY_AFTER_SECONDS = 1.0  # told to a caller whose evaluation a shutdown stopped: another replica answers


def stopped(code: str, message: str) -> ServiceError:
    """The error of work the server stopped before its end: the shutdown's grace period ended
    (`shutting_down`), or its caller went away (`cancelled`); UNAVAILABLE, with Retry-After."""
    if code == "shutting_down":
        err = ServiceError(UNAVAILABLE, "shutting_down", message)
    else:
        err = ServiceError(UNAVAILABLE, "cancelled", message)
    err.retry_after = RETRY_AFTER_SECONDS
    return err


def error_body(code: str, message: str, location=None) -> dict:
    """The contract's error object: code, message and, where one applies, location."""
    err = {"code": code, "message": message}
    if location is not None:
        err["location"] = location
    return {"error": err}
