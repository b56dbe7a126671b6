"""Who may call, how often: API keys and per-client rate limits, for REST and gRPC alike.

* `KeyRing`: the configured keys, held only as SHA-256 digests (a key given as
  `sha256:<hex>` is never known in clear at all). A call presents its key as
  `Authorization: Bearer <key>` (REST header or gRPC metadata) or `x-api-key`.
* `RateLimiter`: a token bucket per client (the key's digest, or the peer
  address when no keys are configured): `rate` tokens a second, at most
  `burst`. With a `SharedStore` the buckets live in Redis (one Lua script, the
  clock of Redis), so replicas share one budget per key; while Redis is down
  each replica falls back to its own buckets (fail-open, like the store).
* `Guard` puts both together, free of any protocol: each transport applies it
  beside its adapters (`web.GuardMiddleware` to the HTTP paths the protocols
  guard, `/v1/*`; `grpc_calls.Guarding` to their gRPC services,
  `ad.v1.Differentiator`). Health, readiness, metrics, the demo page, its
  static files and the API description stay open. Each REST request and each
  gRPC request message takes a token: a call with one request message pays
  when it starts, a stream of requests (`EvaluateStream`) pays as each message
  is read, and the message that finds the bucket empty ends the stream.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import threading
import time
from collections import OrderedDict

from .errors import RATE_LIMITED, UNAUTHENTICATED, ServiceError

log = logging.getLogger("adserve.security")

_MAX_LOCAL_BUCKETS = 10_000  # clients remembered per replica (least recently seen dropped first)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    def __init__(self, keys=()):
        self._digests = []
        for k in keys:
            if k.startswith("sha256:") and len(k) == 71:
                self._digests.append(k[7:].lower())
            else:
                self._digests.append(key_digest(k))

    def __bool__(self) -> bool:
        return bool(self._digests)

    def identify(self, key: str | None) -> str | None:
        """The digest of a configured key (the client's identity), or None."""
        if not key:
            return None
        digest = key_digest(key)
        found = None
        for d in self._digests:  # compare every one, in constant time
            if hmac.compare_digest(d, digest):
                found = d
        return found


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return api_key.strip() if api_key else None


# KEYS[1]: the bucket; ARGV: rate (tokens/s), burst. Returns {allowed, milliseconds until a token}.
_BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(b[1]), tonumber(b[2])
if tokens == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed, wait = 0, 0
if tokens >= 1 then tokens, allowed = tokens - 1, 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, math.ceil(wait * 1000)}
"""


class RateLimiter:
    """Token buckets; `take(client)` -> 0 when allowed, else the seconds until the next token."""

    def __init__(self, rate: float, burst: int = 0, shared=None, clock=time.monotonic):
        self.rate = rate
        self.burst = burst or max(1, math.ceil(2 * rate))
        self._shared, self._clock = shared, clock
        self._buckets: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._script = None
        if shared is not None:
            self._script = shared.client.register_script(_BUCKET_LUA)
        self.limited = 0

    def take(self, client: str) -> float:
        wait = None
        if self._shared is not None and self._shared.up:
            answer = self._shared.call(self._script, keys=[self._shared.prefix + "rl:" + client],
                                       args=[self.rate, self.burst])
            if answer is not None:
                wait = 0.0 if int(answer[0]) else max(int(answer[1]), 1) / 1000
        if wait is None:  # no Redis, or it failed just now: this replica's own bucket
            wait = self._take_local(client)
        if wait:
            self.limited += 1
        return wait

    def _take_local(self, client: str) -> float:
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / self.rate
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > _MAX_LOCAL_BUCKETS:
                self._buckets.popitem(last=False)
        return wait


class Guard:
    """The check of one call: its key (when keys are configured), then its client's rate."""

    def __init__(self, keys=(), rate: float = 0, burst: int = 0, shared=None):
        self.keys = KeyRing(keys)
        self.limiter = RateLimiter(rate, burst, shared) if rate > 0 else None
        self.rejected = {"unauthenticated": 0, "rate_limited": 0}

    @property
    def active(self) -> bool:
        return bool(self.keys) or self.limiter is not None

    def check(self, key: str | None, peer: str) -> str:
        """Raise a `ServiceError` (UNAUTHENTICATED or RATE_LIMITED) for a call that may not go on;
        else the client it was charged to."""
        client = self.identify(key, peer)
        self.charge(client)
        return client

    def identify(self, key: str | None, peer: str) -> str:
        """The client a call is charged to (its key's digest, or its address without keys); UNAUTHENTICATED
        when keys are configured and the call has none, or a wrong one."""
        if not self.keys:
            return "peer:" + peer
        digest = self.keys.identify(key)
        if digest is None:
            self.rejected["unauthenticated"] += 1
            raise ServiceError(UNAUTHENTICATED, "unauthenticated",
                               "a valid API key is required: send it as 'Authorization: Bearer <key>'"
                               if not key else "the API key is not valid")
        return "key:" + digest[:32]

    def charge(self, client: str) -> None:
        """Take one token of `client`'s bucket (nothing without a rate limit); RATE_LIMITED when it is empty,
        with `retry_after`, the seconds until the next token."""
        if self.limiter is None:
            return
        wait = self.limiter.take(client)
        if wait:
            self.rejected["rate_limited"] += 1
            err = ServiceError(RATE_LIMITED, "rate_limited",
                               f"over the rate limit of {self.limiter.rate:g} requests a second "
                               f"(bursts of {self.limiter.burst}); retry in {wait:.2f} s")
            err.retry_after = wait
            raise err


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
