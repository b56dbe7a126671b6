"""A thread-safe LRU map bounded by a total size, with hit and miss counts.

Sizes come from a `size_of` function: 1 per entry bounds the count, the bytes
of the arrays in a result bounds memory. An entry larger than the whole bound
is not stored.
"""

import sys
import threading
from collections import OrderedDict

import numpy as np


def result_nbytes(tree) -> int:
    """Bytes held by a result: its arrays, plus a little per entry and per other leaf."""
    if isinstance(tree, dict):
        return sum(result_nbytes(v) for v in tree.values()) + 64 * len(tree)
    if isinstance(tree, (list, tuple)):
        return sum(result_nbytes(v) for v in tree) + 8 * len(tree) + 56
    if isinstance(tree, np.ndarray):
        return tree.nbytes + 112
    return sys.getsizeof(tree)


class LRU:
    def __init__(self, capacity: int, size_of=lambda value: 1):
        self.capacity, self._size_of = capacity, size_of
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.size = self.hits = self.misses = 0

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
            while self.size > self.capacity:
                _, (_, evicted) = self._items.popitem(last=False)
                self.size -= evicted

    def __len__(self) -> int:
        return len(self._items)
