"""A thread-safe LRU map bounded by a total size, with hit and miss counts.

Sizes come from a `size_of` function: 1 per entry bounds the count, the bytes
of the arrays in a result bounds memory. An entry larger than the whole bound
is not stored. `max_items`, if given, bounds the count as well.
`Shares` keeps one such LRU per tenant, each bounded by an equal share of a
total, so one tenant's burst of entries evicts its own first.
"""

import sys
import threading
from collections import OrderedDict

import numpy as np


def result_nbytes(tree) -> int:
    """Bytes held by a result: its arrays, plus a little per entry and per other leaf."""
    if isinstance(tree, np.ndarray):  # the common leaf, first
        return tree.nbytes + 112
    if isinstance(tree, dict):
        n = 64 * len(tree)
        for v in tree.values():
            n += result_nbytes(v)
        return n
    if isinstance(tree, (list, tuple)):
        return sum(result_nbytes(v) for v in tree) + 8 * len(tree) + 56
    return sys.getsizeof(tree)


class LRU:
    def __init__(self, capacity: int, size_of=lambda value: 1, max_items: int | None = None):
        self.capacity, self._size_of, self.max_items = capacity, size_of, max_items
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.size = self.hits = self.misses = self.evictions = 0

    def get(self, key):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key, value) -> None:
        size = self._size_of(value)
        if size > self.capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= old[1]
            self._items[key] = (value, size)
            self.size += size
            while self.size > self.capacity or (self.max_items is not None and len(self._items) > self.max_items):
                _, (_, evicted) = self._items.popitem(last=False)
                self.size -= evicted
                self.evictions += 1

    def peek(self, key):
        """The value, without counting a hit or a miss or making it recent."""
        with self._lock:
            item = self._items.get(key)
            return None if item is None else item[0]

    def pop(self, key) -> None:
        with self._lock:
            item = self._items.pop(key, None)
            if item is not None:
                self.size -= item[1]

    def keys(self) -> list:
        with self._lock:
            return list(self._items)

    def values(self) -> list:
        with self._lock:
            return [v for v, _ in self._items.values()]

    def __len__(self) -> int:
        return len(self._items)


class Shares:
    """One `LRU` per tenant (made on first use), each of `capacity // tenants`: `tenants` is how many there
    may be (the configured API keys; 1 without keys)."""

    def __init__(self, capacity: int, tenants: int = 1, size_of=lambda value: 1):
        self.share = capacity // max(1, tenants)
        self._size_of = size_of
        self._lrus: dict = {}
        self._lock = threading.Lock()

    def of(self, tenant: str) -> LRU:
        lru = self._lrus.get(tenant)
        if lru is None:
            with self._lock:
                lru = self._lrus.setdefault(tenant, LRU(self.share, self._size_of))
        return lru

    def items(self) -> list:
        """(tenant, LRU) pairs."""
        with self._lock:
            return list(self._lrus.items())

    @property
    def size(self) -> int:
        return sum(lru.size for _, lru in self.items())

    def __len__(self) -> int:
        return sum(len(lru) for _, lru in self.items())
