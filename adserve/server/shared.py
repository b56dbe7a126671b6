"""The registry and result cache that replicas share through Redis (contract: Scale-out).

Two kinds of keys, under a prefix (`adserve:v1:` by default):
* `fn:<id>`: the function's definition in canonical graph form (orjson),
  written once (`SET NX`) and never expiring. A replica that does not know an
  id fetches the definition and compiles it; compiling is deterministic, so it
  gets the same id (checked).
* `result:<version>:<fn id>:<digest of the rest of the cache key>`: one result
  as compact bytes (`pack`), with a TTL. Only these keys expire, so under `maxmemory`
  with `maxmemory-policy volatile-lru` Redis evicts old results and never a
  definition.
* per tenant (`t:<tenant>:`, see tenancy.py): `ids`, a sorted set of the ids
  it registered (all scores 0, so it is ordered by id and paged with
  ZRANGEBYLEX: the listing, and who may use which id); `names`, a hash of name
  to id; `labels`, a hash of id to the last name given to it (checked against
  `names` when read, so a name that moved is not shown on its old id); and
  `tensor:<ref>`, a held tensor (its ref's preimage, see held.py) with a TTL.
  `info:<id>` is a function's metadata for listings, by content like `fn:`.
  None of these expire but the tensors.

Redis speeds replicas up and lets them agree; it is never needed to answer.
Every call fails open: an error opens a circuit breaker, and while it is open
no request touches Redis (a dead Redis costs no time per request). A
background probe retries every few seconds; when Redis answers again, or has
restarted empty (a new `run_id`), this replica writes back the definitions it
holds, so ids registered during the outage become shared again.
"""

import hashlib
import logging
import threading
from typing import Callable, Iterable

import numpy as np
import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .. import __version__

log = logging.getLogger("adserve.shared")

_MAGIC = b"ADR1"
_ARRAY = "\x00a"  # the key that marks an array in a packed result's header


class Unpackable(ValueError):
    pass


def pack(tree) -> bytes:
    """A result as bytes: magic, header length, orjson header, then the arrays' float64 bytes.

    Arrays (and float leaves) become `{"\\0a": [offset, shape]}` in the header;
    other leaves (names, formulas, shapes of a trace) are kept as JSON."""
    body = bytearray()

    def walk(t):
        if isinstance(t, dict):
            if _ARRAY in t:
                raise Unpackable("a result key collides with the array marker")
            return {k: walk(v) for k, v in t.items()}
        if isinstance(t, (list, tuple)):
            return [walk(v) for v in t]
        if isinstance(t, (np.ndarray, np.generic, float)):
            a = np.asarray(t, dtype="<f8")
            offset = len(body)
            body.extend(a.tobytes())
            return {_ARRAY: [offset, list(a.shape)]}
        return t

    try:
        head = orjson.dumps(walk(tree))
    except orjson.JSONEncodeError as e:
        raise Unpackable(str(e)) from None
    return _MAGIC + len(head).to_bytes(4, "little") + head + bytes(body)


def unpack(data: bytes):
    """The tree `pack` wrote; arrays are read-only views of `data`, lists come back as lists."""
    if data[:4] != _MAGIC:
        raise Unpackable("not a packed result")
    n = int.from_bytes(data[4:8], "little")
    head, body = orjson.loads(data[8:8 + n]), memoryview(data)[8 + n:]

    def walk(t):
        if isinstance(t, dict):
            if _ARRAY in t:
                offset, shape = t[_ARRAY]
                count = int(np.prod(shape, dtype=np.int64))
                return np.frombuffer(body, dtype="<f8", count=count, offset=offset).reshape(shape)
            return {k: walk(v) for k, v in t.items()}
        if isinstance(t, list):
            return [walk(v) for v in t]
        return t

    return walk(head)


class SharedStore:
    """Redis behind a circuit breaker. `get_*` answer None and `put_*` do nothing while it is down."""

    def __init__(self, url: str, *, timeout: float = 0.25, result_ttl: int = 3600,
                 result_max_bytes: int = 8 << 20, probe_interval: float = 2.0, prefix: str = "adserve:v1:",
                 client=None):
        self.url, self.result_ttl, self.result_max_bytes = url, result_ttl, result_max_bytes
        self.probe_interval, self.prefix = probe_interval, prefix
        # short timeouts and one immediate retry (for a connection that went stale):
        # a request pays at most two timeouts before the breaker opens
        self._client = client or redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 1))
        self.up = False
        self._run_id = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._republish: Callable[[], Iterable[tuple[str, dict]]] = lambda: ()
        self._republish_tenants: Callable[[], Iterable[tuple]] = lambda: ()
        self.hits = self.misses = self.fetches = self.errors = 0

    # -- life cycle ---------------------------------------------------------------
    def start(self, republish: Callable[[], Iterable[tuple[str, dict]]], tenants=None) -> None:
        """Probe once now (so a healthy Redis is used from the first request), then in the background.

        `republish` lists this replica's (id, definition) pairs, written back after an outage; `tenants`
        its (tenant, id, info, name or None) registrations, written back too (a name only where none is)."""
        self._republish = republish
        if tenants is not None:
            self._republish_tenants = tenants
        self._probe()
        if not self.up:
            log.warning("Redis at %s is unreachable: serving from this replica's memory, retrying every %g s",
                        self._safe_url(), self.probe_interval)
        self._thread = threading.Thread(target=self._probe_loop, name="adserve-redis-probe", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._client.close()

    def stats(self) -> dict:
        return {"up": self.up, "hits": self.hits, "misses": self.misses, "fetches": self.fetches,
                "errors": self.errors}

    # -- registry -----------------------------------------------------------------
    def get_definition(self, function_id: str) -> dict | None:
        raw = self._call(self._client.get, self.prefix + "fn:" + function_id)
        if raw is None:
            return None
        self.fetches += 1
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("Redis holds a definition for %s that is not JSON; ignoring it", function_id[:100])
            return None

    def put_definition(self, function_id: str, definition: dict) -> bool | None:
        """Write a definition unless one is there: True if written, False if it was there, None if Redis is down."""
        return self._call(self._client.set, self.prefix + "fn:" + function_id, orjson.dumps(definition), nx=True)

    # -- tenants: registrations, names, listings ---------------------------------------
    def _t(self, tenant: str) -> str:
        return f"{self.prefix}t:{tenant}:"

    def add_function(self, tenant: str, function_id: str, info: dict, name: str | None = None) -> bool | None:
        """Record that `tenant` registered `function_id` (and points `name` at it): True if the tenant had
        not registered it before, None if Redis is down."""
        t = self._t(tenant)
        pipe = self._client.pipeline(transaction=False)
        pipe.zadd(t + "ids", {function_id: 0})
        pipe.set(self.prefix + "info:" + function_id, orjson.dumps(info), nx=True)
        if name is not None:
            pipe.hset(t + "names", name, function_id)
            pipe.hset(t + "labels", function_id, name)
        done = self._call(pipe.execute)
        return None if done is None else bool(done[0])

    def registered(self, tenant: str, function_id: str) -> bool | None:
        """Whether `tenant` registered `function_id` (None: Redis is down)."""
        if not self.up:
            return None
        score = self._call(self._client.zscore, self._t(tenant) + "ids", function_id)
        return None if not self.up else score is not None

    def name_target(self, tenant: str, name: str) -> str | None:
        raw = self._call(self._client.hget, self._t(tenant) + "names", name)
        return None if raw is None else raw.decode()

    def label(self, tenant: str, function_id: str) -> str | None:
        raw = self._call(self._client.hget, self._t(tenant) + "labels", function_id)
        return None if raw is None else raw.decode()

    def list_functions(self, tenant: str, after: str | None, limit: int) -> list | None:
        """Up to `limit` of the tenant's (id, info, name or None) in id order after `after`; None when down."""
        t = self._t(tenant)
        ids = self._call(self._client.zrangebylex, t + "ids", "(" + after if after else "-", "+", start=0, num=limit)
        if ids is None:
            return None
        ids = [i.decode() for i in ids]
        if not ids:
            return []
        pipe = self._client.pipeline(transaction=False)
        pipe.mget([self.prefix + "info:" + i for i in ids])
        pipe.hmget(t + "labels", ids)
        got = self._call(pipe.execute)
        if got is None:
            return None
        infos, labels = got
        labels = [None if b is None else b.decode() for b in labels]
        named = [n for n in labels if n is not None]
        targets = dict(zip(named, self._call(self._client.hmget, t + "names", named) or [])) if named else {}
        out = []
        for i, raw, name in zip(ids, infos, labels):
            if raw is None:  # written before listings were kept: listed without its metadata
                info = {"id": i}
            else:
                info = orjson.loads(raw)
            target = targets.get(name)
            out.append((i, info, name if target is not None and target.decode() == i else None))
        return out

    # -- held tensors -----------------------------------------------------------------
    def put_tensor(self, tenant: str, ref: str, preimage: bytes, ttl: int) -> None:
        self._call(self._client.set, self._t(tenant) + "tensor:" + ref, preimage, ex=ttl)

    def get_tensor(self, tenant: str, ref: str, ttl: int) -> bytes | None:
        """The preimage of a held tensor, its TTL started again (a tensor in use stays)."""
        if not self.up:
            return None
        return self._call(self._client.getex, self._t(tenant) + "tensor:" + ref, ex=ttl)

    # -- result cache ---------------------------------------------------------------
    def result_key(self, key: tuple) -> str:
        """The Redis key of `evaluation.Evaluation.cache_key`'s tuple (function id first, then plain
        data whose repr is the same in every process); the version keeps upgrades apart."""
        digest = hashlib.blake2b(repr(key[1:]).encode(), digest_size=20).hexdigest()
        return f"{self.prefix}result:{__version__}:{key[0]}:{digest}"

    def get_result(self, key: tuple):
        if self.result_ttl <= 0 or not self.up:
            return None
        raw = self._call(self._client.get, self.result_key(key))
        if raw is None:
            self.misses += 1
            return None
        try:
            tree = unpack(raw)
        except (Unpackable, ValueError, TypeError, KeyError):
            log.warning("Redis holds an unreadable result under %s; ignoring it", self.result_key(key))
            return None
        self.hits += 1
        return tree

    def put_result(self, key: tuple, tree) -> None:
        if self.result_ttl <= 0 or not self.up:
            return
        try:
            data = pack(tree)
        except Unpackable:
            return
        if len(data) <= self.result_max_bytes:
            self._call(self._client.set, self.result_key(key), data, ex=self.result_ttl)

    # -- the breaker ----------------------------------------------------------------
    @property
    def client(self) -> redis.Redis:
        return self._client

    def call(self, method, *args, **kwargs):
        """`method(*args, **kwargs)` through the breaker (a Redis command or script of `client`): None when down."""
        return self._call(method, *args, **kwargs)

    def _call(self, method, *args, **kwargs):
        if not self.up:
            return None
        try:
            return method(*args, **kwargs)
        except redis.RedisError as e:
            self._trip(e)
            return None

    def _trip(self, error) -> None:
        with self._lock:
            self.errors += 1
            was_up, self.up = self.up, False
        if was_up:
            log.warning("Redis at %s failed (%s): serving from this replica's memory, retrying every %g s",
                        self._safe_url(), error, self.probe_interval)

    def _probe_loop(self) -> None:
        while not self._stop.wait(self.probe_interval):
            self._probe()

    def _probe(self) -> None:
        """Check Redis; after an outage or a restart of Redis, write back this replica's definitions."""
        try:
            run_id = self._client.info("server").get("run_id")
            if self.up and run_id == self._run_id:
                return
            written = self._write_back()
        except redis.RedisError as e:
            if self.up:
                self._trip(e)
            return
        with self._lock:
            was_up, first, self.up, self._run_id = self.up, self._run_id is None, True, run_id
        if first:
            log.info("sharing the registry and the result cache through Redis at %s%s", self._safe_url(),
                     f" ({written} definition(s) written back)" if written else "")
        elif written or not was_up:
            log.warning("Redis at %s is reachable again%s; %d definition(s) written back", self._safe_url(),
                        " (it restarted)" if was_up else "", written)

    def _write_back(self) -> int:
        pipe = self._client.pipeline(transaction=False)
        n = 0
        for function_id, definition in list(self._republish()):
            pipe.set(self.prefix + "fn:" + function_id, orjson.dumps(definition), nx=True)
            n += 1
        for tenant, function_id, info, name in list(self._republish_tenants()):
            t = self._t(tenant)
            pipe.zadd(t + "ids", {function_id: 0})
            pipe.set(self.prefix + "info:" + function_id, orjson.dumps(info), nx=True)
            if name is not None:  # a name moved elsewhere during the outage stays where it is
                pipe.hsetnx(t + "names", name, function_id)
                pipe.hsetnx(t + "labels", function_id, name)
        if len(pipe):
            pipe.execute()
        return n

    def _safe_url(self) -> str:
        """The URL without its password, for logs."""
        _, sep, tail = self.url.rpartition("@")
        return f"{self.url.split('://', 1)[0]}://***@{tail}" if sep else self.url
