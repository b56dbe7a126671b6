"""The server process's garbage collector settings (server/collector.py), in a process of their own: they are
the process's, and this test process keeps its own."""

import subprocess
import sys

PROBE = """
import gc
from adserve.server import collector
before = gc.get_threshold()
kept = [[i] for i in range(1000)]  # made at start-up: frozen by tune
changed = collector.tune({threshold})
print(changed, gc.get_threshold()[0], gc.get_threshold()[1:] == before[1:], gc.get_freeze_count() >= 1000)
"""


def probe(threshold: int) -> str:
    r = subprocess.run([sys.executable, "-c", PROBE.format(threshold=threshold)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_tune_freezes_start_up_and_collects_the_young_less_often():
    assert probe(10_000) == ["True", "10000", "True", "True"]


def test_zero_keeps_python_s_defaults():
    changed, young, older_kept, frozen = probe(0)
    assert (changed, older_kept, frozen) == ("False", "True", "False") and young == "700"


def test_the_server_tunes_its_collector_from_its_settings(monkeypatch):
    from adserve.server import cli, collector, logs
    tuned = []
    monkeypatch.setattr(collector, "tune", tuned.append)
    monkeypatch.setattr(logs, "configure", lambda *a: None)  # this process's logging stays as it is
    monkeypatch.setattr(cli, "_exit_past_stuck_workers", lambda: None)  # it would end this process

    class Built:
        guard = type("G", (), {"keys": ()})()

        def run(self):
            tuned.append("ran")

    monkeypatch.setattr("adserve.server.app.build", lambda settings: Built())
    monkeypatch.setenv("ADSERVE_GC_THRESHOLD", "12345")
    cli.main(["--grpc-port", "0"])
    assert tuned == [12345, "ran"]  # after the build, before serving
