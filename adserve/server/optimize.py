"""Server-side minimisation of a registered function with scipy.optimize's optimisers.

`start(service, target, body)` checks the request (`x0`, `method`, `max_iter`,
`gtol`) and evaluates the function at `x0`, so a bad request fails with a
`ServiceError` before anything streams. `Run.progress()` then runs the
optimiser in a thread of its own and yields one dict per iterate:
`{"iteration", "x": {name: array}, "value", "grad_norm", "done", "message",
"success"}`, iteration 0 being `x0` and the last having `done` true. Values and
gradients come from `service.evaluate`, Hessian-vector products from its `hvp`
(never a full Hessian). Leaving the iteration (a cancelled call, a closed
connection, a deadline) sets a flag that the optimiser's callbacks check and
cancels the run's `Deadline` token, which parents each of its evaluations'
deadlines: the evaluation in progress stops too (between two operations), so
the run ends at once.

`Capacity` caps the runs in flight in one process (`ADSERVE_MAX_OPTIMIZERS`).
The `Service` owns the one `Capacity` of its process and is the only caller
of `admit()` (`Service.minimize`): it takes a `Slot` before it starts a run
(over the cap: a RATE_LIMITED `ServiceError` at once) and passes it to
`start`; the slot is free again once both the call (`Run.close()`) and the
optimiser's thread are over, however each ended.
"""

import asyncio
import contextvars
import logging
import math
import threading
from dataclasses import dataclass

import numpy as np

from adserve.engine.deadline import Deadline

from .errors import RATE_LIMITED, UNPROCESSABLE, ServiceError
from .evaluation import tensor_map
from .tensors import describe

log = logging.getLogger("adserve.optimize")

# name -> (scipy's method, whether it takes Hessian-vector products)
METHODS = {"lbfgs": ("L-BFGS-B", False), "newton-cg": ("Newton-CG", True),
           "bfgs": ("BFGS", False), "trust-ncg": ("trust-ncg", True)}
FIELDS = ("x0", "method", "max_iter", "gtol")
DEFAULT_METHOD, DEFAULT_MAX_ITER, MAX_ITER, DEFAULT_GTOL = "lbfgs", 1000, 100_000, 1e-5
QUEUED = 64  # iterates computed ahead of a slow reader before the optimiser waits
RETRY_AFTER = 1.0  # seconds a refused caller is told to wait: runs end at their callers' pace, nobody knows when

_running = 0
_running_lock = threading.Lock()


def running() -> int:
    """Optimisations in progress in this process (a gauge for /metrics)."""
    return _running


class Capacity:
    """At most `limit` minimisations in flight: `admit()` a `Slot` per run, or refuse at once."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"the optimiser limit must be at least 1, not {limit}")
        self.limit = limit
        self.refused = 0
        self._held = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._held

    def admit(self) -> "Slot":
        with self._lock:
            if self._held >= self.limit:
                self.refused += 1
                err = ServiceError(RATE_LIMITED, "too_many_optimizers",
                                   f"too many minimisations in flight: this server runs at most {self.limit} at "
                                   f"once (ADSERVE_MAX_OPTIMIZERS); retry in {RETRY_AFTER:g} s")
                err.retry_after = RETRY_AFTER
                raise err
            self._held += 1
        return Slot(self)

    def _free(self) -> None:
        with self._lock:
            self._held -= 1


class Slot:
    """One run's place under the cap, held by its call and, once started, by the optimiser's thread.

    Each holder releases it once; the place is free when the last one has. A context manager for the call."""

    def __init__(self, capacity: Capacity):
        self._capacity, self._holders, self._lock = capacity, 1, threading.Lock()

    def hold(self) -> None:
        with self._lock:
            if self._holders <= 0:
                raise RuntimeError("this slot was already given back")
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            if self._holders <= 0:
                return
            self._holders -= 1
            last = self._holders == 0
        if last:
            self._capacity._free()

    def __enter__(self) -> "Slot":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass(frozen=True)
class Minimization:
    x0: dict
    method: str
    max_iter: int
    gtol: float


def _error(code: str, message: str) -> ServiceError:
    return ServiceError(UNPROCESSABLE, code, message)


def parse(body, refs=None) -> Minimization:
    """Check a minimisation's fields; absent ones take their defaults."""
    if not isinstance(body, dict):
        raise _error("invalid_minimization", 'a minimisation must be a JSON object such as '
                                             '{"x0": {"x": [0.0, 0.0]}, "method": "lbfgs"}')
    unknown = [k for k in body if k not in FIELDS]
    if unknown:
        raise _error("unknown_field", f"unknown field {unknown[0]!r} in the minimisation; "
                                      f"the fields are {', '.join(FIELDS)}")
    if "x0" not in body:
        raise _error("missing_field", '"x0" is required: the starting point, one tensor per input')
    method = body.get("method", DEFAULT_METHOD)
    if method not in METHODS:
        raise _error("invalid_field", f"method is {describe(method)}, which is not one of: {', '.join(METHODS)}")
    max_iter = body.get("max_iter", DEFAULT_MAX_ITER)
    if type(max_iter) is not int or not 0 < max_iter <= MAX_ITER:
        raise _error("invalid_field", f"max_iter must be an integer from 1 to {MAX_ITER}, not {describe(max_iter)}"
                                      + (f" {max_iter}" if type(max_iter) is int else ""))
    gtol = body.get("gtol", DEFAULT_GTOL)
    if type(gtol) not in (int, float) or not (math.isfinite(gtol) and gtol >= 0):
        raise _error("invalid_field", f"gtol must be a finite number >= 0, not {describe(gtol)}"
                                      + (f" {gtol}" if type(gtol) in (int, float) else ""))
    return Minimization(tensor_map(body["x0"], "x0", refs), method, max_iter, float(gtol))


class _Stopped(Exception):
    """The reader left: unwind the optimiser."""


class _Converged(Exception):
    """The gradient norm reached gtol (the callback's own test, the same for every method)."""

    def __init__(self, iteration: int, x):
        self.iteration, self.x = iteration, x


class _Objective:
    """A function of named, shaped inputs as a function of one flat vector, for scipy."""

    def __init__(self, service, function_id: str, info: dict, stop: threading.Event, token: Deadline | None = None):
        self.service, self.id, self.stop, self.token = service, function_id, stop, token
        self.names = [s["name"] for s in info["inputs"]]
        self.shapes = [tuple(s["shape"]) for s in info["inputs"]]
        self.bounds = np.cumsum([0] + [math.prod(s) for s in self.shapes])
        self._last = None  # (x bytes, value, gradient): the callback asks again for the point just evaluated

    def split(self, x) -> dict:
        parts = zip(self.names, self.shapes, self.bounds, self.bounds[1:])
        return {n: np.array(x[a:b]).reshape(s) for n, s, a, b in parts}

    def flat(self, tensors: dict) -> np.ndarray:
        return np.concatenate([np.ravel(tensors[n]) for n in self.names]) if self.names else np.zeros(0)

    def value_and_gradient(self, x):
        if self._last is not None and self._last[0] == x.tobytes():
            return self._last[1], self._last[2]
        if self.stop.is_set():
            raise _Stopped
        r = self.service.evaluate(self.id, {"inputs": self.split(x), "compute": ["value", "gradient"]},
                                  deadline=self.token)
        value, gradient = float(r["value"]), self.flat(r["gradient"])
        self._last = (np.array(x).tobytes(), value, gradient)
        return value, gradient

    def hvp(self, x, p):
        if self.stop.is_set():
            raise _Stopped
        r = self.service.evaluate(self.id, {"inputs": self.split(x), "compute": ["hvp"], "tangent": self.split(p)},
                                  deadline=self.token)
        return self.flat(r["hvp"])


def start(service, target, body, slot: Slot | None = None) -> "Run":
    """Check the request and evaluate at x0 (CPU work: call it from a worker thread).

    `slot`, from `Capacity.admit()`, is held by the optimiser's thread too while it runs; the caller still
    releases its own hold when its call is over."""
    request = parse(body, getattr(service, "held_tensor", None))
    info = service.info(target) if isinstance(target, str) else service.register(target)[0]
    if info["output_shape"]:
        raise _error("not_scalar", f"minimize needs a function with a scalar output, but this one's output has "
                                   f"shape {info['output_shape']}")
    _check_x0(request.x0, info["inputs"])
    run = Run(service, info, request, slot)
    x0 = run.objective.flat(request.x0)
    run.first = (x0, *run.objective.value_and_gradient(x0))
    return run


def _check_x0(x0: dict, inputs: list) -> None:
    names = [s["name"] for s in inputs]
    for spec in inputs:
        name = spec["name"]
        if name not in x0:
            raise _error("missing_input", f"x0: missing input {name!r} (the function takes {names})")
        if list(x0[name].shape) != spec["shape"]:
            raise _error("shape_mismatch", f"x0.{name} has shape {list(x0[name].shape)}, expected {spec['shape']}")
    extra = [n for n in x0 if n not in names]
    if extra:
        raise _error("unknown_input", f"x0: unknown input {extra[0]!r} (the function takes {names})")


class Run:
    def __init__(self, service, info: dict, request: Minimization, slot: Slot | None = None):
        self.request, self.slot = request, slot
        self._closed = False
        self.stop = threading.Event()
        self.token = Deadline()  # no time limit of its own (each evaluation has one): cancelled with the run
        self.objective = _Objective(service, info["id"], info, self.stop, self.token)
        self.first = None
        self._slots = threading.Semaphore(QUEUED)
        self._queue: asyncio.Queue | None = None
        self._loop = None

    async def progress(self):
        """Every iterate as a dict, the last with done true; leaving early stops the optimiser."""
        global _running
        self._loop, self._queue = asyncio.get_running_loop(), asyncio.Queue()
        if self.slot is not None:
            self.slot.hold()  # the thread's own hold: given back when the thread ends
        with _running_lock:
            _running += 1
        try:
            # in the call's context: its evaluations are the calling tenant's (tenancy.py)
            threading.Thread(target=contextvars.copy_context().run, args=(self._optimise,), name="adserve-minimize",
                             daemon=True).start()
        except BaseException:
            self._ended()
            raise
        try:
            while True:
                item = await self._queue.get()
                self._slots.release()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item["done"]:
                    return
        finally:
            self.cancel()

    def _optimise(self) -> None:
        try:
            try:
                self._emit(0, *self.first)
                self._emit_last(self._minimize())
            except ServiceError as e:
                self._put(e)
            except _Stopped:
                raise
            except Exception as e:
                log.exception("minimize failed")
                self._put(e)
        except _Stopped:
            log.info("minimize stopped by its caller")
        finally:
            self._ended()

    def cancel(self) -> None:
        """Stop the optimiser and the evaluation it is in; nothing if it is over."""
        self.stop.set()
        self.token.cancel("cancelled", "was cancelled: the minimisation was stopped")

    def close(self) -> None:
        """The call is over: stop the optimiser and give back the call's hold on its slot (once)."""
        self.cancel()
        if self.slot is not None and not self._closed:
            self._closed = True
            self.slot.release()

    def _ended(self) -> None:
        global _running
        with _running_lock:
            _running -= 1
        if self.slot is not None:
            self.slot.release()

    def _minimize(self):
        req, obj = self.request, self.objective
        method, second_order = METHODS[req.method]
        iteration = 0

        def callback(intermediate_result):
            nonlocal iteration
            iteration += 1
            x = intermediate_result.x
            value, gradient = obj.value_and_gradient(x)
            grad_norm = self._emit(iteration, x, value, gradient)
            if grad_norm <= req.gtol:
                raise _Converged(iteration, x)

        options = {"maxiter": req.max_iter}
        if method == "Newton-CG":
            # it has no gtol (the callback applies it), and its default xtol (1e-5, on the step) stops
            # it a step or two before the gradient is small
            options["xtol"] = 1e-12
        else:
            options["gtol"] = req.gtol
        x0 = self.first[0]
        if _inf_norm(self.first[2]) <= req.gtol:
            return 0, x0, True, f"the gradient norm at x0 is at most gtol {req.gtol:g}"
        import scipy.optimize  # here, not at start-up: a third of a second to import

        try:
            res = scipy.optimize.minimize(obj.value_and_gradient, x0, jac=True, method=method, callback=callback,
                                          hessp=obj.hvp if second_order else None, options=options)
        except _Converged as done:
            return done.iteration, done.x, True, f"the gradient norm is at most gtol {req.gtol:g}"
        return int(res.nit), res.x, bool(res.success), str(res.message)

    def _emit(self, iteration, x, value, gradient) -> float:
        grad_norm = _inf_norm(gradient)
        self._put({"iteration": iteration, "x": self.objective.split(x), "value": value, "grad_norm": grad_norm,
                   "done": False, "message": "", "success": False})
        return grad_norm

    def _emit_last(self, outcome) -> None:
        iteration, x, success, message = outcome
        value, gradient = self.objective.value_and_gradient(np.asarray(x, dtype=np.float64))
        self._put({"iteration": iteration, "x": self.objective.split(x), "value": value,
                   "grad_norm": _inf_norm(gradient), "done": True, "message": message, "success": success})

    def _put(self, item) -> None:
        """Hand an item to the reader's loop; wait while it is QUEUED items behind, unless told to stop."""
        while not self._slots.acquire(timeout=0.1):
            if self.stop.is_set():
                raise _Stopped
        if self.stop.is_set():
            raise _Stopped
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is gone
            raise _Stopped from None


def _inf_norm(a) -> float:
    return float(np.max(np.abs(a))) if np.size(a) else 0.0
