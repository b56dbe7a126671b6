"""Whose call this is: the tenant every registry and held-tensor lookup is scoped to.

With API keys configured, a tenant is one key (the first 32 hex digits of its
SHA-256 digest, as the guard identifies it); without keys everyone is the one
tenant `PUBLIC`. The transports' guards (`web.GuardMiddleware`,
`grpc_calls.Guarding`) know the key, so they set the tenant of the
call they pass on; the `Service` reads it with `current()`. A context variable
rather than an argument, so that every protocol mounted on the service (the
peer protocols too) is scoped without knowing about tenants: it follows the
call into worker threads (`asyncio.to_thread`, Starlette's thread pool), and a
thread started for the call must be started in a copy of its context.
"""

import contextlib
import contextvars

PUBLIC = "public"  # key digests are hex, so no key's tenant is called this

_current = contextvars.ContextVar("adserve_tenant", default=PUBLIC)


def current() -> str:
    return _current.get()


def of_client(client: str) -> str:
    """The tenant of a `Guard` client ("key:<digest>"; without keys, "peer:<address>", which is PUBLIC)."""
    kind, _, digest = client.partition(":")
    return digest if kind == "key" and digest else PUBLIC


def enter(tenant: str) -> contextvars.Token:
    return _current.set(tenant)


def leave(token: contextvars.Token) -> None:
    try:
        _current.reset(token)
    except ValueError:  # a stream handler closed from another context: that context ends with it
        pass


@contextlib.contextmanager
def acting_as(tenant: str):
    """`with acting_as(t):` calls to the service in this block are tenant `t`'s (in-process callers, tests)."""
    token = _current.set(tenant)
    try:
        yield
    finally:
        _current.reset(token)
