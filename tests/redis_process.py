"""A real redis-server on a free loopback port, started by the tests themselves (never a system service)."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from server_process import free_port


def redis_server_or_skip() -> str:
    """The redis-server binary; missing, the test fails under CI (scripts/install-system-deps.sh installs it)."""
    path = shutil.which("redis-server")
    if path is None:
        message = "redis-server is not installed (scripts/install-system-deps.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class RedisProcess:
    def __init__(self, workdir: Path):
        self.binary = redis_server_or_skip()
        self.workdir, self.port, self.process = workdir, free_port(), None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisProcess":
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.workdir), "--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"]
        log = open(self.workdir / "redis.log", "a")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.workdir / "redis.log").read_text()
                    raise RuntimeError("redis-server did not start:\n" + log) from None
                time.sleep(0.02)
            finally:
                client.close()

    def kill(self) -> None:
        """SIGKILL: Redis disappears mid-run, connections reset, data gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)
