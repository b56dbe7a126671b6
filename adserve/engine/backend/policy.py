"""Which tier runs a plan: chosen by timing, per plan and batch size class, and re-examined now and then.

Generated kernels are scalar loops (no SIMD math library here): on large element-wise work NumPy's
vectorised math can beat them, and threads only pay on large batches of an idle machine. So once a plan's
kernel is ready, its first runs (per batch size class) time each tier and keep the fastest (`pick`); the
choice is then re-examined now and then (a run on another tier, at growing intervals, and every run timed
when runs are long), so a choice made on noisy timings corrects itself. The clock is a parameter: tests
drive the policy on a fake one.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from .interpreter import INTERPRETER, NUMBA, PARALLEL, Ready, interpreter_floor

log = logging.getLogger("adserve.engine")


class Choice:
    """Timings of one (plan, batch size class) and the tier they chose.

    `on` is (tier, module) once chosen, else None (the first runs, trials of every tier).
    `times` holds each tier's most recent run times; a tier's estimate is their median (the lower one of an
    even count): a spike of load is shed, and so is a tier's rare fast run (OpenMP threads under load are fast
    now and then and slow mostly)."""
    __slots__ = ("due", "every", "gap", "last", "made", "next_probe", "on", "pair", "probed", "runs", "times")

    def __init__(self):
        self.on = None
        self.times: dict = {}
        self.runs = 0
        self.next_probe = 0  # the run count at which the next probe is due (see `TimingPolicy._probe`)
        self.gap: dict = {}  # per other tier, the runs between its probes (grows while probes confirm the choice)
        self.due: dict = {}  # per other tier, the run count at which its next probe is due
        self.probed = None   # the tier the last probe ran on
        self.pair = False    # the run after a probe times the chosen tier, a paired sample
        self.every = False   # runs are long: every run is timed
        self.made = False    # a choice was made once (a later one is a switch)
        self.last = None     # the tier chosen before the choice was reopened

    def estimate(self, tier) -> float | None:
        t = self.times.get(tier)
        return sorted(t)[(len(t) - 1) // 2] if t else None


class TimingPolicy:
    """The choices of one backend. `store` (a `KernelStore`) says which kernels are loaded and fetches them;
    `execute(tier, module, graph, plan, B, args, meta, deadline)` runs a plan on a tier (module None: the lower
    tiers); a run's `deadline` (None: none) is passed through to it, untouched."""

    # The first runs of a plan (per batch size class) once its kernel is ready are timed: KERNEL_TRIALS on the
    # kernel (PARALLEL_TRIALS on a parallel variant: threads are the first to suffer from a burst of other
    # work), then the interpreter's (runs from before the kernel count) until it is plainly slower or has
    # INTERPRETER_TRIALS. A tier's estimate is the median of its last WINDOW times; the
    # serial kernel is preferred: the others must be clearly faster (WEIGHT). Timings on a busy machine can
    # mislead, so the choice is re-examined: one run on another tier now and then (after PROBE_FIRST runs, then
    # twice as many after each probe that confirms the choice, up to PROBE_MAX, and rarer for a tier much slower:
    # PROBE_BUDGET, but a kernel gets its first look within FIRST_LOOK runs of a choice, its trials being a few
    # runs in a row; again after PROBE_FIRST when the probe's run beat the chosen tier's), paired with a timed run
    # on the chosen tier; runs of at least EVERY_SECONDS are all timed.
    KERNEL_TRIALS = 3
    PARALLEL_TRIALS = 5
    INTERPRETER_TRIALS = 3
    CLEARLY_FASTER = 0.8   # the interpreter's (or parallel kernel's) best / the kernel's best below this: it wins
    PLAINLY_SLOWER = 4.0   # above this after one run (a first run may be cold): the interpreter is not run again
    WEIGHT = {NUMBA: 1.0, PARALLEL: 1 / CLEARLY_FASTER, INTERPRETER: 1 / CLEARLY_FASTER}
    SWITCH = 0.9           # a chosen tier is left for one whose weighted estimate is below this share of its own
    WINDOW = 5
    PROBE_FIRST = 16
    PROBE_MAX = 1024
    PROBE_BUDGET = 0.01    # probes of a slower tier may cost about this share of the chosen tier's time
    FIRST_LOOK = 256
    PROBE_LONGEST = 1 << 16
    EVERY_SECONDS = 50e-6
    # the serial kernel's time on a batch from which a parallel variant is compiled and tried (measured here,
    # 2 cores: starting the threads costs ~5 us, chunks run at ~0.52x the serial time on an idle machine; the
    # variant costs a compile of a few seconds, worth it for calls of a millisecond or so)
    PARALLEL_SECONDS = 0.5e-3

    def __init__(self, store, stats, execute, clock=time.perf_counter):
        self.store, self.stats, self._execute, self.clock = store, stats, execute, clock
        self.choices: dict = {}  # (plan key, batch size class) -> Choice
        self._lock = threading.Lock()

    def chosen(self, key, batch=1):
        """The tier chosen for plan `key` at this batch size, None while its first runs still time the tiers."""
        c = self.choices.get((key, max(1, batch).bit_length()))
        on = c.on if c is not None else None
        return on[0] if on is not None else None

    def estimates(self, key, batch=1) -> dict:
        """Per tier, the median of its recent timed runs for plan `key` at this batch size (what a choice compares)."""
        c = self.choices.get((key, max(1, batch).bit_length()))
        return {} if c is None else {t: b for t in (NUMBA, PARALLEL, INTERPRETER) if (b := c.estimate(t)) is not None}

    def run(self, graph, plan, args, meta, deadline=None):
        """The plan's outputs, on the tier chosen for this batch size class (trials while it is open)."""
        if type(args) is Ready:
            B = args.points
        else:
            rows = list(map(len, args))  # each arg's leading axis (len: without a Python call per arg; det has 24)
            B = (0 if 0 in rows else max(rows)) if rows else 1  # one row broadcasts against none: no points
        which = (plan.key, B.bit_length())  # batch sizes within a factor of two share a choice
        c = self.choices.get(which)
        if c is not None:
            on = c.on
            if on is not None:
                c.runs += 1
                if c.runs < c.next_probe:
                    if c.every:
                        return self._timed(c, which, on[0], on[1], graph, plan, B, args, meta, deadline)
                    return self._execute(on[0], on[1], graph, plan, B, args, meta, deadline)
                return self._probe(c, which, on, graph, plan, B, args, meta, deadline)
        return self._open(which, graph, plan, B, args, meta, deadline)

    def _timed(self, c, which, tier, mod, graph, plan, B, args, meta, deadline, probe=False):
        t = self.clock()
        out = self._execute(tier, mod, graph, plan, B, args, meta, deadline)
        self._record(c, tier, self.clock() - t)
        if c.on is not None and (c.every or probe):
            self._reconsider(c, which, plan, probe)
        return out

    def _record(self, c, tier, seconds):
        times = c.times.get(tier)
        if times is None:
            times = c.times.setdefault(tier, [])
        times.append(seconds)  # a list, not a deque: other threads may read it meanwhile
        if len(times) > self.WINDOW:
            del times[0]

    def retime(self, key):
        """A parallel variant of plan `key` loaded: its chosen batch sizes probe at their next run (and try it)."""
        for which, c in list(self.choices.items()):
            if which[0] == key and c.on is not None:
                c.next_probe = 0

    def reopen(self, key):
        """Plan `key`'s kernel was replaced (a large kernel's optimised compile took the quick one's place): each
        of its choices is made afresh, the old kernels' timings dropped (the interpreter's kept)."""
        with self._lock:
            for which, c in list(self.choices.items()):
                if which[0] == key:
                    c.times.pop(NUMBA, None)
                    c.times.pop(PARALLEL, None)
                    if c.on is not None:
                        c.last, c.on = c.on[0], None

    def _open(self, which, graph, plan, B, args, meta, deadline):
        """A run while the plan's tier is open: trials (see `_pick`)."""
        mod = self.store.ready.get(plan.key)
        if mod is None and (mod := self.store.kernel(graph)) is None:
            if plan.key not in self.store.pending:  # no kernel coming: nothing to compare
                return self._execute(INTERPRETER, None, graph, plan, B, args, meta, deadline)
            if meta is not None:
                meta["compile"] = "pending"
            c = self.choices.get(which) or self.choices.setdefault(which, Choice())
            return self._timed(c, which, INTERPRETER, None, graph, plan, B, args, meta, deadline)
        c = self.choices.get(which) or self.choices.setdefault(which, Choice())
        tier = self.pick(c, which, graph, plan, B)
        return self._timed(c, which, tier, self.store.module(graph, tier), graph, plan, B, args, meta, deadline)

    def _hopeless(self, c, plan, B) -> bool:
        """The interpreter's floor already loses to the best kernel's time."""
        best = min(b for t in (NUMBA, PARALLEL) if (b := c.estimate(t)) is not None)
        return interpreter_floor(plan, B) > self.CLEARLY_FASTER * best

    def _wants_parallel(self, c, B) -> bool:
        """A parallel variant can pay: a batch (it runs points in parallel; one point is one chunk) long enough."""
        serial = c.estimate(NUMBA)
        return self.store.parallel and B > 1 and serial is not None and serial >= self.PARALLEL_SECONDS

    def _tiers(self, c, graph, plan, B) -> list:
        """The tiers to compare for this choice: the kernels loaded (the parallel variant when the batch is
        long enough for it; asking for it starts its compile) and the interpreter unless its floor loses."""
        tiers = [NUMBA]
        if self._wants_parallel(c, B) and self.store.parallel_kernel(graph) is not None:
            tiers.append(PARALLEL)
        if not self._hopeless(c, plan, B):
            tiers.append(INTERPRETER)
        return tiers

    def pick(self, c, which, graph, plan, B) -> str:
        """The tier to run a plan on while its choice is open; chooses once the timings say enough."""
        if len(c.times.get(NUMBA, ())) < self.KERNEL_TRIALS:
            return NUMBA
        tiers = self._tiers(c, graph, plan, B)
        if PARALLEL in tiers and len(c.times.get(PARALLEL, ())) < self.PARALLEL_TRIALS:
            return PARALLEL
        if INTERPRETER in tiers:
            interp = c.times.get(INTERPRETER, ())
            kernels = min(c.estimate(t) for t in tiers if t != INTERPRETER)
            if len(interp) < self.INTERPRETER_TRIALS and not (interp and min(interp) > self.PLAINLY_SLOWER * kernels):
                return INTERPRETER
        tier = min(tiers, key=lambda t: self._score(c, t))
        self._choose(c, which, tier, graph, "timed")
        return tier

    def _score(self, c, tier) -> float:
        best = c.estimate(tier)
        return math.inf if best is None else best * self.WEIGHT[tier]

    def _choose(self, c, which, tier, graph, why):
        with self._lock:
            if c.on is not None:  # chosen meanwhile by another request
                return
            self._start(c, tier, self.store.module(graph, tier))
            if not c.made:
                c.made = True
                self.stats.chosen[tier] += 1
            elif tier != c.last:
                self.stats.switches += 1
                why = f"switched from {c.last}"
        self._log(c, which, tier, why)

    def _start(self, c, tier, mod):
        """(Under the lock.) `tier` is chosen: the other tiers timed so far get their probes scheduled afresh."""
        c.on = (tier, mod)
        c.every = (c.estimate(tier) or 0.0) >= self.EVERY_SECONDS
        c.pair = False
        c.gap = {t: self.PROBE_FIRST for t in c.times if t != tier}
        c.due = {t: c.runs + min(self._gap(c, t, tier, self.PROBE_FIRST),
                                 self.PROBE_LONGEST if t == INTERPRETER else self.FIRST_LOOK) for t in c.gap}
        c.next_probe = min(c.due.values(), default=c.runs + self.PROBE_MAX)

    def _gap(self, c, tier, chosen, gap) -> int:
        """Runs until `tier`'s next probe: `gap`, or more while its estimate says a probe costs more than
        PROBE_BUDGET of the chosen tier's time (a probe of a tier 5x slower comes at most once in 400 runs)."""
        mine, theirs = c.estimate(chosen), c.estimate(tier)
        if not mine or theirs is None:
            return gap
        return int(min(max(gap, (theirs / mine - 1) / self.PROBE_BUDGET), self.PROBE_LONGEST))

    def _log(self, c, which, tier, why):
        if log.isEnabledFor(logging.INFO):
            est = ", ".join(f"{t} {c.estimate(t) * 1e3:.3g} ms" for t in (NUMBA, PARALLEL, INTERPRETER)
                            if c.estimate(t) is not None)
            log.info("plan %s, batch of %d-%d: %s (%s; median recent runs: %s)", which[0], 1 << max(which[1] - 1, 0),
                     (1 << which[1]) - 1, tier, why, est)

    def _probe(self, c, which, on, graph, plan, B, args, meta, deadline):
        """A chosen plan's probe: a tier never timed for it (a parallel variant loaded since) reopens the choice;
        else one run on the tier whose probe is due first, the next run on the chosen one, then the choice is
        reconsidered."""
        tiers = self._tiers(c, graph, plan, B)
        if any(t not in c.times for t in tiers):
            with self._lock:
                if c.on is on:
                    c.last, c.on = on[0], None
            return self._open(which, graph, plan, B, args, meta, deadline)
        if c.pair:  # the chosen tier's half of the probe
            c.pair = False
            return self._timed(c, which, on[0], on[1], graph, plan, B, args, meta, deadline, probe=True)
        due = {t: d for t, d in c.due.items() if t in tiers}
        if not due:
            c.next_probe = c.runs + self.PROBE_MAX
            return self._execute(on[0], on[1], graph, plan, B, args, meta, deadline)
        tier = c.probed = min(due, key=due.get)
        self.stats.probes += 1
        if c.every:  # the chosen tier is timed on every run anyway
            return self._timed(c, which, tier, self.store.module(graph, tier), graph, plan, B, args, meta, deadline,
                               probe=True)
        c.pair = True
        c.next_probe = c.runs + 1
        return self._timed(c, which, tier, self.store.module(graph, tier), graph, plan, B, args, meta, deadline)

    def _reconsider(self, c, which, plan, probe):
        """After a timed run of a chosen plan: switch when another tier's estimate is clearly better. After a
        probe that confirms the choice, the probed tier's next one comes twice as late (or later, see `_gap`),
        or soon when its run beat the chosen tier's (its estimate may follow with another sample or two)."""
        on = c.on
        if on is None:
            return
        tier = on[0]
        # each tier's score once (a run of >= EVERY_SECONDS comes here every time)
        scores = {t: self._score(c, t) for t in c.times if t != PARALLEL
                  or self.store.ready.get(plan.parallel_key) is not None}
        best = min(scores, key=scores.get)
        if best != tier and scores[best] < self.SWITCH * scores.get(tier, self._score(c, tier)):
            key = plan.parallel_key if best == PARALLEL else plan.key
            mod = None if best == INTERPRETER else self.store.ready.get(key)
            if best != INTERPRETER and mod is None:
                return
            with self._lock:
                if c.on is not on:
                    return
                self._start(c, best, mod)
                self.stats.switches += 1
            self._log(c, which, best, f"switched from {tier}")
            return
        t = c.probed
        if probe and t in c.gap:
            probed, chosen = c.times.get(t), c.times.get(tier)
            beat = bool(probed and chosen) and probed[-1] * self.WEIGHT[t] < chosen[-1] * self.WEIGHT[tier]
            c.gap[t] = self.PROBE_FIRST if beat else min(2 * c.gap[t], self.PROBE_MAX)
            c.due[t] = c.runs + (c.gap[t] if beat else self._gap(c, t, tier, c.gap[t]))
            c.next_probe = min(c.due.values())
