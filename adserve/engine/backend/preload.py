"""The kernel store's disk cache across restarts: which kernels were used last, and loading them at start.

A kernel's last use is a marker file's time under `<cache>/kernels/used/` (the module itself is never touched:
numba's cache index checks its time stamp). `preload` loads the most recently used kernels on disk in a
background thread when the server starts, so known functions run compiled from their first request.
Mixed into store.KernelStore, whose state (`dir`, `ready`, `pending`, `compiler`, ...) it reads.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import threading
import time

from .. import mathlib
from .plan import is_parallel_key

log = logging.getLogger("adserve.engine")


class Preload:
    """KernelStore's preload and recency (a mixin)."""

    def preload(self, limit: int = 32) -> threading.Thread:
        """Start a background thread that compiles mathlib's exp and log for the interpreter, then loads the
        `limit` kernels on disk used most recently (importing numba and the kernels' runtime helpers first if any
        of them is numba's), so that after a restart known functions run compiled from their first request. It
        never blocks: a request meanwhile runs on the interpreter, and a kernel a request asks for that is not
        being preloaded loads through the pool as usual. (Parallel variants are not preloaded: they load from
        disk when a large batch asks for them.)"""
        thread = threading.Thread(target=self._preload, args=(limit,), name="adserve-preload", daemon=True)
        thread.start()
        return thread

    def _preload(self, limit):
        t0 = time.perf_counter()
        try:
            mathlib.compiled()  # the interpreter's exp and log (0.1-0.2 s), before a request needs them
            keys = self._recent(limit)
            numba = any(self.compiler.get(key) != "llvm" for key in keys)
            if numba:  # numba's kernels need it loaded; a process of LLVM kernels never imports it (~0.5 s of CPU)
                from ..codegen import runtime  # noqa: F401
        except Exception as e:
            log.warning("kernel preload stopped: %s: %s", type(e).__name__, e)
            return
        t1 = time.perf_counter()
        for key in keys:
            if self.closed:
                break
            with self._lock:
                if key in self.ready or key in self.failed or key in self.pending:
                    continue
                self.pending.add(key)
            self._load_only(key)
            if key in self.ready:
                self.stats.preloaded += 1
        log.info("%s; %d of %d recent kernels preloaded in %.2f s",
                 f"numba imported in {t1 - t0:.2f} s" if numba else "numba not needed", self.stats.preloaded,
                 len(keys), time.perf_counter() - t1)

    def _used_path(self, key):
        return os.path.join(self.dir, "used", key)

    def _mark_used(self, key):
        """Record a kernel's last use for `preload` (a marker file's time: the module itself must not be
        touched, numba's cache index checks its time stamp)."""
        path = self._used_path(key)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a"):
                pass
            os.utime(path)
        except OSError:
            pass

    def _recent(self, limit) -> list:
        """Keys of serial kernels on disk for this code generator, most recently used (or compiled) first."""
        from ..codegen.module import CODEGEN_VERSION
        found = []
        if self.llvm:
            from ..codegen.llvm_kernel import LLVM_VERSION
            for path in glob.glob(os.path.join(self.dir, f"gen_*.llvm{LLVM_VERSION}.o")):
                key = os.path.basename(path)[4:].split(".")[0]
                with contextlib.suppress(OSError):
                    found.append((max(os.stat(p).st_mtime for p in (path, self._used_path(key))
                                      if os.path.exists(p)), key, None))
        for path in glob.glob(os.path.join(self.dir, "gen_*.py")):
            key = os.path.basename(path)[4:-3]
            if is_parallel_key(key):
                continue
            index = glob.glob(os.path.join(self.dir, "__pycache__", f"gen_{key}.kernel-*.nbi"))
            times = []
            for p in [*index, self._used_path(key)]:
                with contextlib.suppress(OSError):
                    times.append(os.stat(p).st_mtime)
            if index and times:
                found.append((max(times), key, path))
        found.sort(reverse=True)
        out, tag = [], f"(codegen v{CODEGEN_VERSION})"
        for _, key, path in found:
            if len(out) >= limit:
                break
            if path is None:  # an LLVM kernel (its file names carry the back end's version)
                self.compiler[key] = "llvm"
                out.append(key)
                continue
            try:
                with open(path) as f:
                    head = f.read(200)
            except OSError:
                continue
            if tag in head:  # another generator's kernel can never be asked for
                out.append(key)
        return out
