"""Faults survived, each against a real server process: the compile worker killed mid-compile, a read-only
kernel cache, corrupt and truncated kernel files, a slow Redis and one that drops connections, clients that
vanish mid-stream, and SIGTERM during a compile.

In every case the server keeps answering correctly (on a lower tier at worst), never answers 500, keeps the
functions Redis holds, and shows the fault in /metrics and its log. Waits are generous anti-hang bounds, never
timing assertions."""

import asyncio
import contextlib
import glob
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import grpc
import httpx
import pytest

from redis_process import RedisProcess
from server_process import running_server

SURVEY = {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}], "expr": "log(x1) + x1*x2 - sin(x2)"}
AT = {"inputs": {"x1": 2.0, "x2": 5.0}, "compute": ["value", "gradient"]}
VALUE = math.log(2.0) + 10.0 - math.sin(5.0)
GRADIENT = {"x1": 0.5 + 5.0, "x2": 2.0 - math.cos(5.0)}


def wait_until(predicate, seconds=120.0, every=0.02):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def metric(client, name, labels=""):
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + labels + " ") or labels == "" and line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def check_survey(client, fn=None, expr=SURVEY):
    """The survey function's value and gradient are right (whatever tier answers); never a 5xx."""
    r = client.post(f"/v1/functions/{fn}/evaluate" if fn else "/v1/evaluate",
                    json=AT if fn else {**AT, "function": expr})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["value"] == pytest.approx(VALUE)
    assert body["gradient"]["x1"] == pytest.approx(GRADIENT["x1"]) and body["gradient"]["x2"] == pytest.approx(GRADIENT["x2"])


def workers_of(pid):
    """Pids of the compile workers (`adserve.engine.codegen.worker`) that are children of `pid`."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(stat) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            with open(stat[:-4] + "cmdline", "rb") as f:
                if b"adserve.engine.codegen.worker" in f.read():
                    out.append(int(stat.split("/")[2]))
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def compiling(server, client, fn, cache):
    """Evaluate (at new points: a cached result runs nothing) until a compile worker compiles; its pid. A worker
    is started ahead of any compile, so a worker alone is not one compiling: the kernel's source must be in the
    `cache` (written just before the worker is given it; a numba compile then takes seconds)."""
    pids, n = [], [0]

    def look():
        n[0] += 1
        client.post(f"/v1/functions/{fn}/evaluate", json={**AT, "inputs": {"x1": 2.0 + n[0] * 1e-6, "x2": 5.0}})
        pids[:] = workers_of(server.process.pid)
        return len(pids) == 1 and bool(glob.glob(str(cache / "kernels" / "gen_*.py")))

    assert wait_until(look, 120, 0.01), "no compile worker started"
    time.sleep(0.2)  # from its source written to the worker given it: microseconds
    return pids[0]


def server_env(home, llvm=False) -> dict:
    """A server's environment here: its kernel cache under `home`, no python tier (kernels are what is tested).
    numba compiles the survey (`llvm` False): the LLVM back end would build it in a fraction of a second, too soon
    for a test to kill its worker, and leave no numba cache to damage; its own files are damaged below."""
    return {"ADSERVE_CACHE_DIR": str(home / "cache"), "ADSERVE_PYTHON_TIER": "false",
            "ADSERVE_LLVM_KERNELS": "true" if llvm else "false"}


@pytest.fixture
def env(tmp_path):
    return server_env(tmp_path)


# -- the compile worker ----------------------------------------------------------------------------
def test_compile_worker_killed_mid_compile(tmp_path, env):
    with running_server(tmp_path / "server.log", env=env) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        fn = client.post("/v1/functions", json=SURVEY).json()["id"]
        worker = compiling(server, client, fn, tmp_path / "cache")
        os.kill(worker, signal.SIGKILL)
        assert wait_until(lambda: metric(client, "adserve_compile_failures_total", '{reason="killed"}') >= 1)
        for _ in range(5):
            check_survey(client, fn)
        check_survey(client, expr={**SURVEY, "expr": SURVEY["expr"] + " + 0*x1"})  # new functions still work
        assert "compile worker failed (signal 9)" in server.log()


def test_sigterm_during_a_compile_leaves_no_worker(tmp_path, env):
    with running_server(tmp_path / "server.log", env=env) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        fn = client.post("/v1/functions", json=SURVEY).json()["id"]
        worker = compiling(server, client, fn, tmp_path / "cache")
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0, server.log()[-3000:]
        assert wait_until(lambda: not alive(worker), 30), "the compile worker outlived the server"


# -- the kernel cache ------------------------------------------------------------------------------
def busy_until(client, fn, predicate, seconds=240):
    """Evaluate at new points (a cached result runs no plan) until `predicate()`; each answer checked."""
    n = [0]

    def step():
        n[0] += 1
        x1 = 2.0 + n[0] * 1e-9
        r = client.post(f"/v1/functions/{fn}/evaluate", json={**AT, "inputs": {"x1": x1, "x2": 5.0}})
        assert r.status_code == 200, r.text
        assert r.json()["value"] == pytest.approx(math.log(x1) + 5 * x1 - math.sin(5.0))
        return predicate()

    return wait_until(step, seconds, 0.05)


@pytest.fixture(scope="module")
def survey_kernels(tmp_path_factory):
    """A server run until the survey function's kernels are compiled to disk, once for this file: their
    directory, which each test copies into a cache of its own."""
    home = tmp_path_factory.mktemp("survey-kernels")
    env = server_env(home)
    kernels = os.path.join(env["ADSERVE_CACHE_DIR"], "kernels")
    with running_server(home / "first.log", env=env) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        fn = client.post("/v1/functions", json=SURVEY).json()["id"]
        assert busy_until(client, fn, lambda: metric(client, "adserve_kernel_compiles_total") >= 1
                          and glob.glob(os.path.join(kernels, "__pycache__", "gen_*.nbi"))), server.log()[-3000:]
    return kernels


@pytest.fixture
def compiled_cache(env, survey_kernels):
    """This test's kernel directory, holding the survey function's compiled kernels."""
    kernels = os.path.join(env["ADSERVE_CACHE_DIR"], "kernels")
    shutil.copytree(survey_kernels, kernels)
    return kernels


def damage_files(paths, truncate: bool):
    """Cut each file to half its length (`truncate`), or overwrite it with 3,000 random bytes."""
    for path in paths:
        if truncate:
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
        else:
            with open(path, "wb") as f:
                f.write(os.urandom(3000))


@pytest.mark.parametrize("damage", ["garbage module", "truncated module", "garbage numba cache"])
def test_corrupt_kernel_files(tmp_path, env, compiled_cache, damage):
    kernels = compiled_cache
    modules = glob.glob(os.path.join(kernels, "gen_*.py"))
    caches = glob.glob(os.path.join(kernels, "__pycache__", "gen_*.nb[ic]"))
    assert modules and caches
    damage_files(modules if "module" in damage else caches, truncate=damage.startswith("truncated"))
    with running_server(tmp_path / "second.log", env=env) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        fn = client.post("/v1/functions", json=SURVEY).json()["id"]
        check_survey(client, fn)
        if "module" in damage:  # set aside and compiled again
            assert busy_until(client, fn, lambda: metric(client, "adserve_kernel_load_failures_total") >= 1
                              and metric(client, "adserve_kernel_compiles_total") >= 1), server.log()[-3000:]
            assert "did not load" in server.log()
        else:  # numba's own cache check: it loads, or it fails to load and is compiled again
            assert busy_until(client, fn, lambda: metric(client, "adserve_kernel_disk_loads_total")
                              + metric(client, "adserve_kernel_load_failures_total") >= 1), server.log()[-3000:]
        check_survey(client, fn)
        assert ' 500 ' not in server.log()


@pytest.mark.parametrize("damage", ["garbage object", "truncated object", "garbage IR"])
def test_corrupt_llvm_kernel_files(tmp_path, damage):
    """The LLVM back end's cache entry (IR text and object code) damaged: set aside and compiled again, never a
    crash (LLVM's loader is handed only code whose hash matches) and never a wrong answer."""
    env = server_env(tmp_path / "home", llvm=True)
    kernels = os.path.join(env["ADSERVE_CACHE_DIR"], "kernels")
    with running_server(tmp_path / "first.log", env=env) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        fn = client.post("/v1/functions", json=SURVEY).json()["id"]
        assert busy_until(client, fn, lambda: metric(client, "adserve_llvm_kernel_compiles_total") >= 1
                          and glob.glob(os.path.join(kernels, "gen_*.o"))), server.log()[-3000:]
    damage_files(glob.glob(os.path.join(kernels, "gen_*.o" if "object" in damage else "gen_*.ll")),
                 truncate=damage.startswith("truncated"))
    with running_server(tmp_path / "second.log", env=env) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        fn = client.post("/v1/functions", json=SURVEY).json()["id"]
        check_survey(client, fn)
        assert busy_until(client, fn, lambda: metric(client, "adserve_kernel_load_failures_total") >= 1
                          and metric(client, "adserve_llvm_kernel_compiles_total") >= 1), server.log()[-3000:]
        assert "did not load" in server.log()
        check_survey(client, fn)
        assert ' 500 ' not in server.log()


@contextlib.contextmanager
def read_only(path):
    """`path` made read-only: a read-only bind mount as root (root writes through permission bits), else chmod."""
    if os.geteuid() != 0:
        modes = {p: os.stat(p).st_mode for p in [path, *glob.glob(os.path.join(path, "**"), recursive=True)]}
        for p in modes:
            os.chmod(p, modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, m in modes.items():
                os.chmod(p, m)
        return
    if subprocess.run(["mount", "--bind", path, path], capture_output=True).returncode != 0:
        pytest.skip("cannot make a read-only mount here")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", path], capture_output=True).returncode != 0:
            pytest.skip("cannot make a read-only mount here")
        yield
    finally:
        subprocess.run(["umount", path], capture_output=True)


@pytest.mark.parametrize("filled", [False, True])
def test_read_only_kernel_cache(tmp_path, env, filled, request):
    cache = env["ADSERVE_CACHE_DIR"]
    if filled:
        request.getfixturevalue("compiled_cache")
    else:
        os.makedirs(cache)
    with read_only(cache), running_server(tmp_path / "server.log", env=env) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        fn = client.post("/v1/functions", json=SURVEY).json()["id"]
        check_survey(client, fn)
        if filled:  # what is on disk still loads
            assert busy_until(client, fn, lambda: metric(client, "adserve_kernel_disk_loads_total") >= 1)
        else:
            assert busy_until(client, fn, lambda: metric(client, "adserve_compile_failures_total",
                                                         '{reason="io"}') >= 1), server.log()[-3000:]
            assert "not usable" in server.log()
        check_survey(client, fn)


# -- Redis -----------------------------------------------------------------------------------------
class Proxy:
    """A TCP proxy in front of Redis that delays each response by `delay` seconds, or drops connections."""

    def __init__(self, port):
        self.target, self.delay, self.drop = port, 0.0, False
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.conns: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.drop:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src, dst, delayed):
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if delayed and self.delay:
                    time.sleep(self.delay)
                if self.drop:
                    break
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()

    def cut(self):
        """Drop every open connection (and refuse new ones while `drop`)."""
        self.drop = True
        for s in self.conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.conns.clear()

    def close(self):
        self.server.close()
        self.cut()


@pytest.fixture
def redis_pair(tmp_path):
    """(proxy, redis, [replica a, replica b]): two replicas sharing one Redis through the proxy."""
    r = RedisProcess(tmp_path).start()
    proxy = Proxy(r.port)
    env = {"ADSERVE_REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0", "ADSERVE_COMPILE": "false",
           "ADSERVE_CACHE_DIR": str(tmp_path / "cache")}
    try:
        with contextlib.ExitStack() as stack:
            servers = [stack.enter_context(running_server(tmp_path / f"replica{i}.log", env=env)) for i in (0, 1)]
            yield proxy, r, servers
    finally:
        proxy.close()
        r.kill()


def other(n):
    return {**SURVEY, "expr": SURVEY["expr"] + f" + {n}*0*x1"}


def test_slow_redis(redis_pair):
    proxy, _, (a, b) = redis_pair
    with httpx.Client(base_url=a.url, timeout=60) as ca, httpx.Client(base_url=b.url, timeout=60) as cb:
        held = ca.post("/v1/functions", json=SURVEY).json()["id"]
        proxy.delay = 0.5  # over the 0.25 s per-call timeout: every call times out and the breaker opens
        for n in range(3):
            check_survey(ca, held)
            fn = ca.post("/v1/functions", json=other(n))
            assert fn.status_code in (200, 201)
            check_survey(ca, fn.json()["id"])
            check_survey(cb, expr=other(n))
        assert metric(ca, "adserve_redis_errors_total") >= 1
        proxy.delay = 0.0  # Redis answers again: the function it held is still there for the other replica
        assert wait_until(lambda: cb.get(f"/v1/functions/{held}").status_code == 200, 60, 0.2)
        check_survey(cb, held)
        assert wait_until(lambda: metric(cb, "adserve_redis_up") == 1, 60, 0.2)


def test_redis_dropping_connections(redis_pair):
    proxy, _, (a, b) = redis_pair
    with httpx.Client(base_url=a.url, timeout=60) as ca, httpx.Client(base_url=b.url, timeout=60) as cb:
        held = ca.post("/v1/functions", json=SURVEY).json()["id"]
        stop = threading.Event()
        statuses = []

        def load():
            n = 0
            while not stop.is_set():
                n += 1
                r = ca.post("/v1/evaluate", json={**AT, "function": other(n % 7)})
                statuses.append(r.status_code)

        thread = threading.Thread(target=load)
        thread.start()
        try:
            # first, connections stay down until the replica has noticed (registering functions new to the
            # cluster, which it publishes): on a busy machine a short cut may pass while it touches no Redis
            proxy.cut()
            fresh = iter(range(1000, 100000))

            def noticed():
                statuses.append(ca.post("/v1/evaluate", json={**AT, "function": other(next(fresh))}).status_code)
                return metric(ca, "adserve_redis_errors_total") >= 1

            assert wait_until(noticed, 60, 0.05), "the dropped connection went unnoticed"
            proxy.drop = False
            for _ in range(5):  # then short cuts, landing mid-request on whatever the load thread is doing
                time.sleep(0.2)
                proxy.cut()
                time.sleep(0.2)
                proxy.drop = False
        finally:
            stop.set()
            thread.join(60)
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        assert wait_until(lambda: cb.get(f"/v1/functions/{held}").status_code == 200, 60, 0.2)
        check_survey(cb, held)
        assert metric(ca, "adserve_redis_errors_total") >= 1
        assert "redis" in a.log().lower()


# -- clients that vanish mid-stream ----------------------------------------------------------------------
ROSENBROCK = {"inputs": [{"name": "x", "shape": [200]}],
              "expr": "sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)"}


def running(client):
    return metric(client, "adserve_minimize_running")


@pytest.fixture(scope="module")
def streaming(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("streams")
    from server_process import free_port
    env = {"ADSERVE_COMPILE": "false", "ADSERVE_CACHE_DIR": str(tmp / "cache")}
    with running_server(tmp / "server.log", grpc_port=free_port(), env=env) as server:
        yield server


def test_rest_minimize_client_vanishes(streaming):
    with httpx.Client(base_url=streaming.url, timeout=60) as client:
        fn = client.post("/v1/functions", json=ROSENBROCK).json()["id"]
        for _ in range(3):
            with httpx.Client(base_url=streaming.url, timeout=60) as own, \
                    own.stream("POST", f"/v1/functions/{fn}/minimize",
                               json={"x0": {"x": [-1.2] * 200}, "max_iter": 100000, "gtol": 0.0}) as r:
                assert r.status_code == 200
                next(r.iter_lines())
        assert wait_until(lambda: running(client) == 0, 60, 0.05)
        check_survey(client)


def test_grpc_streams_cancelled(streaming):
    from adserve.server.grpc_gen import ad_pb2, ad_pb2_grpc

    with httpx.Client(base_url=streaming.url, timeout=60) as client:
        fn = client.post("/v1/functions", json=ROSENBROCK).json()["id"]

        async def main():
            async with grpc.aio.insecure_channel(streaming.grpc) as channel:
                stub = ad_pb2_grpc.DifferentiatorStub(channel)
                x0 = {"x": ad_pb2.Tensor(shape=[200], data=[-1.2] * 200)}
                for _ in range(3):
                    call = stub.Minimize(ad_pb2.MinimizeRequest(id=fn, x0=x0, method="lbfgs", max_iter=100000, gtol=0.0))
                    await call.read()
                    call.cancel()

                async def requests():
                    for i in range(1000):
                        yield ad_pb2.EvaluateRequest(id=fn, inputs={"x": ad_pb2.Tensor(shape=[200], data=[0.1 * i] * 200)},
                                                     compute=["value", "gradient"])
                        await asyncio.sleep(0)

                stream = stub.EvaluateStream(requests())
                for _ in range(3):
                    await stream.read()
                stream.cancel()

        asyncio.run(main())
        assert wait_until(lambda: running(client) == 0, 60, 0.05)
        check_survey(client)
        assert 'code="CANCELLED"' in client.get("/metrics").text
