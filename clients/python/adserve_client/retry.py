"""Calling again when the server says "not now": a rate limit or the optimiser cap (HTTP 429, gRPC
RESOURCE_EXHAUSTED with `retry-after`), or a replica that is shutting down or not reachable (HTTP 503, gRPC
UNAVAILABLE, a refused connection).

Every call of the clients is safe to repeat (registering is idempotent, evaluating is pure, a refused minimize
never started), so all are retried, `attempts` calls in all. The wait before attempt n+1 is the server's
Retry-After, when it sent one, plus an exponential backoff (`backoff * 2**n`, at most `max_backoff`) of which a
random half is kept ("equal jitter"): clients refused at the same moment do not all return at the same moment.
"""

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Retry:
    attempts: int = 3  # calls in all, the first one included; 1: never call again
    backoff: float = 0.1  # seconds, doubled each attempt
    max_backoff: float = 5.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (0 for the first call)."""
        base = min(self.max_backoff, self.backoff * 2 ** attempt)
        return (retry_after or 0.0) + base * random.uniform(0.5, 1.0)


NEVER = Retry(attempts=1)


def policy(retries) -> Retry:
    """A `Retry` from the clients' `retries` argument: a `Retry`, or a number of retries after the first call."""
    if isinstance(retries, Retry):
        return retries
    return Retry(attempts=1 + max(0, int(retries)))


def seconds(header: str | None) -> float | None:
    """A Retry-After value (delta-seconds) as seconds; None when absent or an HTTP date (then backoff alone)."""
    try:
        return max(0.0, float(header)) if header else None
    except ValueError:
        return None
