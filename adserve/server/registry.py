"""Each tenant's registry: which functions it registered, the names it gave them, and their listing.

Compiled functions are shared by content (the `Service`'s LRU, keyed by id);
what a tenant may use, see and list is only what it registered, kept here:
* `definitions`: per tenant, id -> (the definition as sent, without its name;
  the function's metadata), both as JSON bytes. An LRU per tenant bounded by
  an equal share of `definition_bytes` (`cache.Shares`), so one tenant's burst
  of registrations evicts its own entries first. An evicted function is no
  longer registered here (404), unless Redis still holds it.
* names: per tenant, name -> id (a tag: registering the name again moves it),
  and `labels`, id -> the last name given to it, shown in listings while the
  name still points there. At most `max_names` per tenant.
With a `SharedStore`, Redis holds the same per tenant and is the authority
while it is up: a name resolves there first (so a name moved on another
replica is moved here too), an id registered on another replica is this
tenant's too, and listings come from there (every replica lists the same set).
While Redis is down, this replica's own entries answer.
"""

import bisect
import re
import threading

import orjson

from .cache import LRU, Shares
from .errors import UNPROCESSABLE, ServiceError
from .tensors import describe

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
NAME_RULE = "1-64 characters, each a letter, a digit, '_', '.' or '-'"
ENTRY_BYTES = 160  # an entry's keys and tuple, beside its two byte strings
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000  # functions in one page of a listing


def page(after, limit) -> tuple[str | None, int]:
    """A listing's (after, limit) checked: `limit` an integer (or its text) from 1 to MAX_LIMIT (None: the
    default), `after` an id or nothing; 422 `invalid_parameter` otherwise."""
    if limit is None or limit == "":
        limit = DEFAULT_LIMIT
    elif isinstance(limit, str) and limit.strip().isdigit():
        limit = int(limit)
    if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
        raise ServiceError(UNPROCESSABLE, "invalid_parameter",
                           f"limit must be an integer from 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT}), "
                           f"not {str(limit)[:40]!r}")
    if after is not None and (not isinstance(after, str) or len(after) > 200):
        raise ServiceError(UNPROCESSABLE, "invalid_parameter",
                           "after must be the id a page ended with (its \"next\"), at most 200 characters")
    return after or None, limit


def split_name(definition: dict) -> tuple[dict, str | None]:
    """(the definition without "name", the name or None); 422 `invalid_name` for a name that breaks the rule."""
    if "name" not in definition:
        return definition, None
    name = definition["name"]
    if not isinstance(name, str) or not NAME.fullmatch(name):
        shown = f"{name[:80]!r}" if isinstance(name, str) else describe(name)
        raise ServiceError(UNPROCESSABLE, "invalid_name", f'"name" must be {NAME_RULE}; it is {shown}')
    return {k: v for k, v in definition.items() if k != "name"}, name


def _tight(info: dict) -> bytes:
    return bytes(memoryview(orjson.dumps(info)))  # a tight copy: orjson's buffer has slack


def _entry_size(entry) -> int:
    return len(entry[0]) + len(entry[1]) + ENTRY_BYTES


class Registry:
    def __init__(self, definition_bytes: int, tenants: int = 1, max_names: int = 65536, shared=None):
        self.definitions = Shares(definition_bytes, tenants, _entry_size)
        self._names = Shares(max_names * max(1, tenants), tenants)      # tenant: name -> id
        self._labels = Shares(max_names * max(1, tenants), tenants)     # tenant: id -> name
        self._shared = shared
        self._lock = threading.Lock()

    def add(self, tenant: str, function_id: str, definition: bytes, info: dict, name: str | None = None) -> bool:
        """Register `function_id` for `tenant` (pointing `name` at it): whether it is new for the tenant."""
        shelf = self.definitions.of(tenant)
        with self._lock:  # two registrations at once: one of them is the new one
            new = shelf.get(function_id) is None
            if new:
                shelf.put(function_id, (definition, _tight(info)))
            if name is not None:
                self._point(tenant, name, function_id)
        if self._shared is not None and (new or name is not None):
            added = self._shared.add_function(tenant, function_id, info, name)
            new = new and added is not False  # False: registered before, on another replica
        return new

    def remember(self, tenant: str, function_id: str, definition: bytes, info: dict) -> None:
        """Keep here what Redis says the tenant registered (so the next call needs no Redis)."""
        self.definitions.of(tenant).put(function_id, (definition, _tight(info)))

    def definition(self, tenant: str, function_id: str) -> bytes | None:
        entry = self.definitions.of(tenant).peek(function_id)
        return None if entry is None else entry[0]

    def holds(self, tenant: str, function_id: str) -> bool:
        """Registered by `tenant` and kept on this replica."""
        return self.definitions.of(tenant).get(function_id) is not None

    def registered(self, tenant: str, function_id: str) -> bool:
        """Registered by `tenant`, here or (Redis) on any replica."""
        if self.holds(tenant, function_id):
            return True
        return self._shared is not None and bool(self._shared.registered(tenant, function_id))

    def resolve(self, tenant: str, name: str) -> str | None:
        """The id `name` points at for `tenant`, or None."""
        if not NAME.fullmatch(name):
            return None
        if self._shared is not None and self._shared.up:
            target = self._shared.name_target(tenant, name)
            if self._shared.up:
                return target
        return self._names.of(tenant).get(name)

    def label(self, tenant: str, function_id: str) -> str | None:
        """The last name given to `function_id` while it still points there."""
        name = None
        if self._shared is not None and self._shared.up:
            name = self._shared.label(tenant, function_id)
        if name is None:
            name = self._labels.of(tenant).peek(function_id)
        return name if name is not None and self.resolve(tenant, name) == function_id else None

    def list(self, tenant: str, after: str | None, limit: int) -> tuple[list, str | None]:
        """(up to `limit` metadata dicts in id order after `after`, with "name" where one points there; the
        cursor of the next page, or None at the end)."""
        page = self._shared.list_functions(tenant, after, limit + 1) if self._shared is not None else None
        if page is None:
            page = self._local_page(tenant, after, limit + 1)
        more = len(page) > limit
        page = page[:limit]
        out = [{**info, "id": fid, **({"name": name} if name else {})} for fid, info, name in page]
        return out, (page[-1][0] if more else None)

    def _local_page(self, tenant: str, after: str | None, n: int) -> list:
        shelf = self.definitions.of(tenant)
        ids = sorted(shelf.keys())
        start = bisect.bisect_right(ids, after) if after else 0
        page = []
        for fid in ids[start:start + n]:
            entry = shelf.peek(fid)
            if entry is not None:
                name = self._labels.of(tenant).peek(fid)
                name = name if name is not None and self._names.of(tenant).peek(name) == fid else None
                page.append((fid, orjson.loads(entry[1]), name))
        return page

    def exports(self) -> list:
        """(tenant, id, info, name or None) of every registration kept here, for Redis after an outage."""
        out = []
        for tenant, shelf in self.definitions.items():
            labels = self._labels.of(tenant)
            for fid in shelf.keys():
                entry = shelf.peek(fid)
                if entry is not None:
                    out.append((tenant, fid, orjson.loads(entry[1]), labels.peek(fid)))
        return out

    def _point(self, tenant: str, name: str, function_id: str) -> None:
        names, labels = self._names.of(tenant), self._labels.of(tenant)
        before = names.peek(name)
        names.put(name, function_id)
        labels.put(function_id, name)
        if before is not None and before != function_id and labels.peek(before) == name:
            labels.pop(before)
