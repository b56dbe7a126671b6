"""The engine's BLAS runs on the calling thread (blas.py): an Engine sets every OpenBLAS in the process to one
thread unless OPENBLAS_NUM_THREADS says otherwise. Each case runs in a fresh process (the setting is the
process's)."""

import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes, os
import numpy, scipy.linalg.cython_blas  # both OpenBLAS libraries loaded before the engine
from adserve.engine import Engine
Engine()
counts = []
for path in sorted({l.split()[-1] for l in open('/proc/self/maps') if 'openblas' in l.lower()}):
    lib = ctypes.CDLL(path)
    for name in ('scipy_openblas_get_num_threads64_', 'scipy_openblas_get_num_threads', 'openblas_get_num_threads'):
        if hasattr(lib, name):
            counts.append(getattr(lib, name)())
print(os.environ.get('OPENBLAS_NUM_THREADS'), sorted(set(counts)), len(counts))
"""


def _probe(env_value):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if env_value is not None:
        env["OPENBLAS_NUM_THREADS"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_one_thread_by_default():
    var, counts, libs = _probe(None)
    assert var == "1" and counts == "[1]" and int(libs) >= 2  # NumPy's and SciPy's, both at one thread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_the_environment_is_kept():
    var, *rest = _probe("2")
    assert var == "2" and rest[0] == "[2]"
