"""Interleaved timing: every contender of a case is timed in each round, in a rotating order.

A round times, per contender, `reps` blocks of `k` back-to-back calls (k chosen
so a block lasts about `block_s`) and keeps the fastest block: time slices
lost to other processes only ever add time, so the minimum of a few nearby
blocks sheds them. Drift over the run hits every contender of a round alike;
ratios are formed per round, then summarised (median and quartiles), so they
stay meaningful on a loaded machine where absolute times wander.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Timings:
    per_call: dict  # contender -> array of seconds per call, one per round

    def median(self, name) -> float:
        return float(np.median(self.per_call[name]))

    def ratio(self, num, den) -> "Spread":
        return Spread.of(self.per_call[num] / self.per_call[den])


@dataclass
class Spread:
    median: float
    lo: float  # 25th percentile
    hi: float  # 75th percentile

    @staticmethod
    def of(values) -> "Spread":
        lo, med, hi = np.percentile(values, [25, 50, 75])
        return Spread(float(med), float(lo), float(hi))

    def text(self, digits=2) -> str:
        return f"{self.median:.{digits}f} ({self.lo:.{digits}f}-{self.hi:.{digits}f})"


def _block(fn, k) -> float:
    t = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - t) / k


def measure(contenders: dict, rounds: int = 21, block_s: float = 0.001, reps: int = 3,
            budget_s: float = 20.0) -> Timings:
    """Time zero-argument callables, interleaved; fewer rounds (at least 5) when they would pass `budget_s`."""
    names = list(contenders)
    for fn in contenders.values():  # warm-up: caches, lazy initialisation, branch predictors
        fn()
    single = {n: min(_block(contenders[n], 1) for _ in range(3)) for n in names}
    ks = {n: max(1, int(block_s / max(single[n], 1e-9))) for n in names}
    per_round = reps * sum(ks[n] * single[n] for n in names)
    rounds = max(5, min(rounds, int(budget_s / max(per_round, 1e-9))))
    out = {n: np.empty(rounds) for n in names}
    for r in range(rounds):
        shift = r % len(names)
        for n in names[shift:] + names[:shift]:
            out[n][r] = min(_block(contenders[n], ks[n]) for _ in range(reps))
    return Timings(out)
