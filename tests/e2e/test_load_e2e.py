"""Load and faults against a real server process on loopback.

* 16 concurrent clients (threads of this process, one HTTP connection each) send mixed traffic for
  LOAD_SECONDS, and each goes on until it has had AFTER_FAULT answers after Redis was killed (on a busy machine
  a client may make few requests in LOAD_SECONDS: what is asserted is what happened, not how fast): new
  registrations, evaluations by id (old ids too: the registry is an LRU of 48, so many
  were evicted and are compiled again), batches, and definitions sent inline; every answer is checked
  against NumPy. Meanwhile the faults: Redis is killed, every numba compile times out (0.3 s limit), and
  a minimize stream is dropped by its client after its first line, again and again.
  No request may fail, no optimiser may be left running; p50/p99 latencies are printed.
* SIGTERM during load: requests in flight are answered (or, past the grace period, refused with 503
  shutting_down and Retry-After: never another 5xx), every answer received is right, the process exits 0 and
  leaves no compile worker behind. Asserted on what happened, not on how fast: the signal is sent once
  answers are flowing, and the clients run until the server is gone.
"""

import os
import random
import re
import signal
import threading
import time

import httpx
import numpy as np
import pytest

from redis_process import RedisProcess
from server_process import free_port, minimizers_running, running_server, wait_until

LOAD_SECONDS = float(os.environ.get("ADSERVE_LOAD_SECONDS", "8"))
CLIENTS = 16
KEY = "load-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
N = 4
AFTER_FAULT = 5  # requests each client makes, at least, once Redis is gone


def definition(a: float) -> dict:
    return {"inputs": [{"name": "x", "shape": []}, {"name": "y", "shape": [N]}], "expr": f"{a!r} * sin(x) + sum(y * y)"}


def expected(a, x, y):
    return a * np.sin(x) + np.sum(y * y, axis=-1), a * np.cos(x), 2 * y


class Traffic:
    def __init__(self, url: str, seed: int, known: list, lock: threading.Lock):
        self.client = httpx.Client(base_url=url, timeout=60, headers=AUTH)
        self.rng, self.known, self.lock = random.Random(seed), known, lock
        self.latencies, self.errors, self.counts = [], [], {}
        self.after_fault = 0  # requests answered since Redis was killed

    def post(self, path, body):
        started = time.perf_counter()
        r = self.client.post(path, json=body)
        self.latencies.append(time.perf_counter() - started)
        return r

    def check(self, ok: bool, what: str, r):
        if not ok:
            self.errors.append(f"{what}: {r.status_code} {r.text[:300]}")

    def one(self):
        kind = self.rng.choice(["register", "by_id", "by_id", "batch", "inline"])
        self.counts[kind] = self.counts.get(kind, 0) + 1
        rng = self.rng
        x, y = rng.uniform(-3, 3), np.array([rng.uniform(-2, 2) for _ in range(N)])
        if kind == "register":
            a = round(rng.uniform(0.1, 10), 6)
            r = self.post("/v1/functions", definition(a))
            self.check(r.status_code in (200, 201) and len(r.json()["id"]) > 8, kind, r)
            if r.status_code in (200, 201):
                with self.lock:
                    self.known.append((r.json()["id"], a))
            return
        with self.lock:
            fid, a = rng.choice(self.known)
        if kind == "batch":
            B = rng.randint(2, 16)
            xs, ys = np.array([rng.uniform(-3, 3) for _ in range(B)]), np.array([[rng.uniform(-2, 2)] * N] * B)
            r = self.post(f"/v1/functions/{fid}/evaluate", {"inputs": {"x": xs.tolist(), "y": ys.tolist()},
                                                            "compute": ["value", "gradient"], "batch": True})
            want = expected(a, xs, ys)
        else:
            body = {"inputs": {"x": x, "y": y.tolist()}, "compute": ["value", "gradient"]}
            if kind == "inline":
                r = self.post("/v1/evaluate", {**body, "function": definition(a)})
            else:
                r = self.post(f"/v1/functions/{fid}/evaluate", body)
            want = expected(a, x, y)
        if r.status_code != 200:
            return self.check(False, kind, r)
        got = r.json()
        ok = (np.allclose(got["value"], want[0]) and np.allclose(got["gradient"]["x"], want[1])
              and np.allclose(got["gradient"]["y"], want[2]))
        self.check(ok, f"{kind} wrong answer", r)

    def run(self, until: float, fault: threading.Event | None = None):
        """Requests until `until`; with a `fault`, also until AFTER_FAULT of them were made after it was set."""
        try:
            while time.monotonic() < until or fault is not None and self.after_fault < AFTER_FAULT:
                faulted = fault is not None and fault.is_set()
                self.one()
                self.after_fault += faulted
        except Exception as e:  # a transport error is a failed request too
            self.errors.append(f"{type(e).__name__}: {e}")
        finally:
            self.client.close()


def drop_streams(url: str, until: float, dropped: list):
    """A client that starts a long minimize and disconnects after its first line, over and over."""
    body = {"x0": {"x": 3.0, "y": [1.0] * N}, "method": "lbfgs", "max_iter": 100_000, "gtol": 0.0}
    with httpx.Client(base_url=url, timeout=60, headers=AUTH) as c:
        fid = c.post("/v1/functions", json=definition(1.5)).json()["id"]
        while time.monotonic() < until:
            with c.stream("POST", f"/v1/functions/{fid}/minimize", json=body) as r:
                next(r.iter_lines())
            dropped.append(1)
            time.sleep(0.2)


def percentile(values, q):
    return float(np.percentile(np.array(values) * 1e3, q))


def test_mixed_load_with_faults(tmp_path):
    redis_proc = RedisProcess(tmp_path).start()
    env = {"ADSERVE_API_KEYS": KEY, "ADSERVE_REDIS_URL": redis_proc.url, "ADSERVE_MAX_FUNCTIONS": "48",
           "ADSERVE_COMPILE_TIMEOUT_SECONDS": "0.3", "ADSERVE_CACHE_DIR": str(tmp_path / "cache"),
           "ADSERVE_LOG_LEVEL": "warning"}
    try:
        with running_server(tmp_path / "server.log", env=env) as server:
            with httpx.Client(base_url=server.url, headers=AUTH) as c:
                known = [(c.post("/v1/functions", json=definition(a)).json()["id"], a) for a in (1.0, 2.0)]
            lock, until, fault = threading.Lock(), time.monotonic() + LOAD_SECONDS, threading.Event()
            clients = [Traffic(server.url, seed, known, lock) for seed in range(CLIENTS)]
            dropped = []
            threads = [threading.Thread(target=t.run, args=(until, fault)) for t in clients]
            threads.append(threading.Thread(target=drop_streams, args=(server.url, until, dropped)))
            for t in threads:
                t.start()
            time.sleep(LOAD_SECONDS / 3)
            redis_proc.kill()  # mid-run: the breaker opens, everything is served from memory
            fault.set()
            for t in threads:
                t.join(LOAD_SECONDS + 120)
            assert not any(t.is_alive() for t in threads), "a client is still waiting for an answer"
            errors = [e for t in clients for e in t.errors]
            latencies = [v for t in clients for v in t.latencies]
            counts = {}
            for t in clients:
                for k, v in t.counts.items():
                    counts[k] = counts.get(k, 0) + v
            with httpx.Client(base_url=server.url) as c:
                assert wait_until(lambda: minimizers_running(c) == 0, 10), "an optimiser outlived its client"
                metrics = c.get("/metrics").text
            print(f"\nload: {len(latencies)} requests from {CLIENTS} clients in {LOAD_SECONDS:g} s "
                  f"({len(latencies) / LOAD_SECONDS:.0f}/s), {counts}; p50 {percentile(latencies, 50):.1f} ms, "
                  f"p99 {percentile(latencies, 99):.1f} ms; {len(errors)} errors; faults: Redis killed at "
                  f"{LOAD_SECONDS / 3:.1f} s, {len(dropped)} streams dropped mid-way, "
                  + ", ".join(line for line in metrics.splitlines()
                              if line.startswith(("adserve_kernel_compile_failures_total",
                                                  "adserve_redis_up", "adserve_functions_registered"))))
            log = server.log()
            assert not errors, (errors[:5], log[log.find("Traceback") - 300:][:6000])
            assert all(t.after_fault >= AFTER_FAULT for t in clients) and dropped
            assert "adserve_redis_up 0.0" in metrics
            assert "Traceback" not in server.log()
    finally:
        redis_proc.kill()


def _children(pid: int) -> set:
    """Child processes of `pid` (started by any of its threads)."""
    found = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found |= {int(p) for p in f.read().split()}
        except OSError:
            pass
    return found


def test_sigterm_during_load(tmp_path):
    env = {"ADSERVE_API_KEYS": KEY, "ADSERVE_SHUTDOWN_GRACE_SECONDS": "5", "ADSERVE_CACHE_DIR": str(tmp_path / "c"),
           "ADSERVE_COMPILE_TIMEOUT_SECONDS": "30"}
    with running_server(tmp_path / "server.log", env=env) as server:
        with httpx.Client(base_url=server.url, headers=AUTH) as c:
            known = [(c.post("/v1/functions", json=definition(a)).json()["id"], a) for a in (1.0, 2.0)]
        lock, until = threading.Lock(), time.monotonic() + 120  # each client stops at its first refused request
        clients = [Traffic(server.url, 100 + seed, known, lock) for seed in range(8)]
        threads = [threading.Thread(target=t.run, args=(until,)) for t in clients]
        for t in threads:
            t.start()
        assert wait_until(lambda: sum(len(t.latencies) for t in clients) >= 16, 60), "no traffic before the signal"
        workers = _children(server.process.pid)
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(60)
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert server.process.returncode == 0
        answered = sum(len(t.latencies) for t in clients)
        # a request sent once the server is closing is refused at the transport (connection refused, or reset:
        # uvicorn closes idle keep-alive connections, and one a request was just written to is reset unread);
        # a request the server took is answered, and rightly: no 5xx, no wrong answer
        # past the grace period, a request still computing is stopped and told so
        refused = ("ConnectError", "RemoteProtocolError", "ReadError")
        stopped = [e for t in clients for e in t.errors if re.match(r"[\w ]+: 503 ", e)]
        bad = [e for t in clients for e in t.errors if not e.startswith(refused) and e not in stopped]
        assert all("shutting_down" in e for e in stopped), stopped[:5]
        assert not bad, bad[:5]
        assert answered >= 16 and "Traceback" not in server.log()
        assert wait_until(lambda: not any(os.path.exists(f"/proc/{p}") and _alive(p) for p in workers), 30), \
            f"compile workers left running: {workers}"
        print(f"\nSIGTERM under load: {answered} answers, all right; exit 0; "
              f"{len(workers)} worker process(es) at the signal, none left")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    pytest.main([__file__, "-s", "-q"])
