"""CPU seconds per test file, for finding what makes the suite slow: `ADSERVE_TEST_CPU_REPORT=DIR make test`.

Wall time on a busy machine says little; CPU time (user + system, of the test process and of the children it
has reaped: compile workers, servers) is what the suite costs. Each test process writes DIR/cpu-<worker>.json,
{file: seconds}, and DIR/tests-<worker>.json, {test: seconds}; `python tests/cpu_report.py DIR [--tests N]` sums
the files, largest first (and lists the N costliest tests). xdist runs a file whole in one
process (--dist loadfile), so a file's time is the rusage between its first test's start and its last's end.
"""

import json
import os
import resource
import sys


def cpu_now() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class CpuReport:
    def __init__(self, where: str):
        self.where = where
        self.seconds: dict = {}
        self.tests: dict = {}
        self.mark = cpu_now()

    def pytest_runtest_logfinish(self, nodeid, location):
        now = cpu_now()
        name = nodeid.split("::")[0]
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.mark
        self.tests[nodeid] = now - self.mark
        self.mark = now

    def pytest_sessionfinish(self, session):
        os.makedirs(self.where, exist_ok=True)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(os.path.join(self.where, f"cpu-{worker}.json"), "w") as f:
            json.dump(self.seconds, f, indent=1)
        with open(os.path.join(self.where, f"tests-{worker}.json"), "w") as f:
            json.dump(self.tests, f, indent=1)


def summary(where: str, tests: int = 0) -> str:
    total: dict = {}
    for name in os.listdir(where):
        if name.startswith("cpu-") and name.endswith(".json"):
            with open(os.path.join(where, name)) as f:
                for k, v in json.load(f).items():
                    total[k] = total.get(k, 0.0) + v
    rows = sorted(total.items(), key=lambda kv: -kv[1])
    lines = [f"{v:8.1f} s  {k}" for k, v in rows] + [f"{sum(total.values()):8.1f} s  in all"]
    if tests:
        each: dict = {}
        for name in os.listdir(where):
            if name.startswith("tests-") and name.endswith(".json"):
                with open(os.path.join(where, name)) as f:
                    for k, v in json.load(f).items():  # the controller process records its own (tiny) entries
                        each[k] = max(v, each.get(k, 0.0))
        lines += ["", f"the {tests} costliest tests:"]
        lines += [f"{v:8.1f} s  {k}" for k, v in sorted(each.items(), key=lambda kv: -kv[1])[:tests]]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(sys.argv[1], int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == "--tests" else 0))
