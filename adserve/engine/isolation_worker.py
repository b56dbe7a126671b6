"""An isolated evaluation worker: `python -m adserve.engine.isolation_worker READ_FD WRITE_FD STOP_FD`.

Started by isolation.py's `WorkerPool`. It reads a `WorkerSpec`, sets its memory limit (RLIMIT_AS) and
CPU priority, builds its own engine and says ("ready",), then answers requests one at a time, each a pickled
("evaluate", request number, function id, (exported graph, its node locations) or None, Engine.evaluate's keyword arguments, (the deadline's
time.monotonic() expiry, seconds, label) or None). Replies are pickled tuples: ("ok", result, meta), ("stopped", code, reason, what,
progress), ("error", class name, code, message, location), ("memory", message), ("unknown",) when it no
longer keeps the function and no graph came, or ("failed", text). A thread reads STOP_FD: (request number,
code, reason) cancels that request's deadline if it is the one computing. It exits when its pipe closes, or within
a second of its parent's end (a thread watches), even in the middle of a request.
"""

from __future__ import annotations

import os
import pickle
import resource
import struct
import sys
import threading
import time
import traceback
from collections import OrderedDict
from multiprocessing.connection import Connection

MAX_FUNCTIONS = 256  # compiled functions kept (LRU); one evicted comes back with its graph when asked for


def _read_into(fd: int, buffer) -> None:
    view = memoryview(buffer)
    while view:
        n = os.readv(fd, [view])
        if n == 0:
            raise EOFError
        view = view[n:]


def receive(fd: int) -> bytearray | None:
    """The next message on `fd` (multiprocessing's framing: a 4-byte big-endian length, or -1 and an 8-byte
    one), read into one buffer of its size; None if that cannot be had, the message then read and dropped, so
    the pipe stays at a message's start. (Connection.recv_bytes asks for a buffer of all that remains at every
    read and copies the whole at the end: near the memory limit it failed in the middle of a message, and the
    next read took the rest for a new one.)"""
    head = bytearray(4)
    _read_into(fd, head)
    (size,) = struct.unpack("!i", head)
    if size == -1:
        head = bytearray(8)
        _read_into(fd, head)
        (size,) = struct.unpack("!Q", head)
    try:
        data = bytearray(size)
    except MemoryError:
        chunk = bytearray(1 << 16)
        while size:
            step = min(size, len(chunk))
            _read_into(fd, memoryview(chunk)[:step])
            size -= step
        return None
    _read_into(fd, data)
    return data


def _watch_parent(parent: int) -> None:
    """Exit once the parent is gone, even in the middle of a request (a thread: the main one computes)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _engine(spec):
    from .backend import Interpreter, Tiered
    from .engine import Engine
    if spec.cache_dir is None:
        backend = Interpreter()
    else:
        backend = Tiered(spec.cache_dir, compile=spec.compile, compile_timeout=spec.compile_timeout,
                         python=spec.python, workers=1, compile_memory=spec.compile_memory, llvm=spec.llvm)
    engine = Engine(backend, spec.limits)
    engine.preload()  # numba and the kernels used last, in the background, as the server does
    if spec.memory_bytes:
        from .isolation import _bytes
        engine.out_of_memory = (f"out of memory evaluating this request: over the memory limit of an isolated "
                                f"worker, {_bytes(spec.memory_bytes)} (ADSERVE_WORKER_MEMORY_BYTES)")
    return engine


class _Current:
    """The request being computed (its number and deadline), for the thread that stops it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seq, self.deadline = 0, None

    def set(self, seq, deadline):
        with self.lock:
            self.seq, self.deadline = seq, deadline

    def stop(self, seq, code, reason):
        with self.lock:
            if seq == self.seq and self.deadline is not None:
                self.deadline.cancel(code, reason)


def _listen(conn, current):
    """Stop requests as the pool asks (their deadline cancelled): the main thread is busy computing them."""
    while True:
        try:
            current.stop(*pickle.loads(conn.recv_bytes()))
        except (EOFError, OSError):
            return


def _answer(engine, functions, msg, current):
    from .deadline import Deadline, Stopped
    from .errors import EngineError, LimitError
    from .frontends.graph_json import restore_locations
    _, seq, fid, graph, call, limit = msg
    fn = functions.get(fid)
    if fn is None:
        if graph is None:
            return ("unknown",)
        definition, locations = graph
        fn = engine.compile_definition(definition)
        restore_locations(fn.graph, locations)  # errors name the program's lines, as in the server
        functions[fid] = fn
        if len(functions) > MAX_FUNCTIONS:
            functions.popitem(last=False)
    functions.move_to_end(fid)
    if limit is not None:
        expires, seconds, label = limit
        deadline = Deadline(max(0.0, expires - time.monotonic()), label)
        deadline.seconds = seconds  # the message names the caller's limit, not what was left of it
    else:
        deadline = Deadline(None)  # no time limit, but a cancel from the pool stops it
    current.set(seq, deadline)
    meta = {}
    try:
        result = engine.evaluate(fn, **call, meta=meta, deadline=deadline)
    except Stopped as e:
        return ("stopped", e.code, e.reason, e.what, e.progress)
    except LimitError as e:
        if e.message == engine.out_of_memory:
            return ("memory", e.message)
        return ("error", type(e).__name__, e.code, e.message, e.location)
    except EngineError as e:
        return ("error", type(e).__name__, e.code, e.message, e.location)
    except MemoryError:
        return ("memory", engine.out_of_memory)
    except ImportError as e:
        if "failed to map segment" in str(e):  # a library that no longer fits the address-space limit
            return ("memory", engine.out_of_memory)
        raise
    finally:
        current.set(0, None)
        deadline.close()
    return ("ok", result, meta)


def main():
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    recv = Connection(int(sys.argv[1]), writable=False)
    send = Connection(int(sys.argv[2]), readable=False)
    current = _Current()
    threading.Thread(target=_listen, args=(Connection(int(sys.argv[3]), writable=False), current),
                     daemon=True).start()
    try:
        spec = pickle.loads(recv.recv_bytes())
    except EOFError:
        return
    if spec.memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (spec.memory_bytes, spec.memory_bytes))
    from .allocator import keep_freed_memory
    keep_freed_memory(spec.malloc_keep_bytes)  # a long evaluation's large blocks, reused call after call
    try:
        os.nice(spec.nice)
    except OSError:
        pass
    engine = _engine(spec)
    send.send_bytes(pickle.dumps(("ready",)))
    functions: OrderedDict = OrderedDict()
    while True:
        try:
            data = receive(recv.fileno())
        except EOFError:  # the pool closed the pipe
            return
        try:
            msg = pickle.loads(data) if data is not None else None
        except MemoryError:  # the request's own inputs do not fit
            msg = None
        try:
            reply = _answer(engine, functions, msg, current) if msg is not None else ("memory", engine.out_of_memory)
        except MemoryError:
            reply = ("memory", engine.out_of_memory)
        except Exception as e:  # a bug: said, and the worker goes on
            reply = ("failed", f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2000:]}")
        try:
            data = pickle.dumps(reply, protocol=5)
        except MemoryError:
            data = pickle.dumps(("memory", engine.out_of_memory), protocol=5)
        send.send_bytes(data)


if __name__ == "__main__":
    main()
