"""Every error code the service and the engine can raise has a status in both protocols' tables
(`status.HTTP`, `status.GRPC`), and means one thing: one kind, so one status, wherever it is raised.

The codes are collected from the source: `ServiceError(KIND, "code", ...)` in the server (and its modules'
`_error`/`_invalid` helpers), `...Error(..., code="code")` and the error classes' own codes in the engine.
An engine error's kind is what the service makes of it (`service.ENGINE_ERRORS`)."""

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import adserve.engine
import adserve.server
from adserve.engine import errors as engine_errors
from adserve.engine.deadline import DEADLINE_EXCEEDED, Stopped
from adserve.server import errors, status
from adserve.server.service import ENGINE_ERRORS, Service, ServiceError

SERVER = Path(adserve.server.__file__).parent
ENGINE = Path(adserve.engine.__file__).parent
ENGINE_CLASSES = {name: cls for name, cls in vars(engine_errors).items()
                  if inspect.isclass(cls) and issubclass(cls, engine_errors.EngineError)}
# raised both as a LimitError (413) and, for graph bodies nested too deep, as a DefinitionError (422)
TWO_KINDS = {"limit_exceeded"}


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            yield node, func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)


def _constant(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def server_codes() -> set:
    found = set()
    for path in SERVER.glob("*.py"):
        module = importlib.import_module(f"adserve.server.{path.stem}")
        for call, name in _calls(path):
            if name == "ServiceError" and len(call.args) >= 2 and _constant(call.args[1]):
                found.add((_constant(call.args[1]), getattr(errors, call.args[0].id)))
            elif name in ("_error", "_invalid") and call.args and _constant(call.args[0]):
                found.add((_constant(call.args[0]), getattr(module, name)(_constant(call.args[0]), "m").kind))
    return found


def _kind_of(error: engine_errors.EngineError) -> str:
    with pytest.raises(ServiceError) as raised:
        with ENGINE_ERRORS:
            raise error
    return raised.value.kind


def engine_codes() -> set:
    found = {(cls.code, _kind_of(cls("m"))) for cls in ENGINE_CLASSES.values()}
    # a stopped evaluation: its deadline passed, or it was cancelled (its client gone, the server stopping)
    found |= {(code, _kind_of(Stopped(code, "was stopped"))) for code in (DEADLINE_EXCEEDED, "cancelled",
                                                                          "shutting_down")}
    for path in ENGINE.rglob("*.py"):
        for call, name in _calls(path):
            code = next((_constant(k.value) for k in call.keywords if k.arg == "code"), None)
            if code and name in ENGINE_CLASSES:
                found.add((code, _kind_of(ENGINE_CLASSES[name]("m", code=code))))
    return found


# the kinds that are no fault of the request: work the server stopped (past its deadline; by its shutdown)
STOPPED = {errors.TIMED_OUT: (504, "DEADLINE_EXCEEDED"), errors.UNAVAILABLE: (503, "UNAVAILABLE")}


def test_the_tables_cover_every_kind():
    assert set(status.HTTP) == set(status.GRPC) == set(errors.KINDS)
    assert all(400 <= s < 500 for kind, s in status.HTTP.items() if kind not in STOPPED)
    assert {kind: (status.HTTP[kind], status.GRPC[kind].name) for kind in STOPPED} == STOPPED


def test_every_code_raised_has_a_status_in_both_tables():
    codes = server_codes() | engine_codes()
    assert len(codes) > 40 and ("too_many_optimizers", errors.RATE_LIMITED) in codes
    assert ("not_scalar", errors.UNPROCESSABLE) in codes and ("too_many_sweeps", errors.TOO_LARGE) in codes
    for code, kind in codes:
        assert kind in status.HTTP and kind in status.GRPC, code


def test_a_stopped_evaluation_is_504_or_503_with_retry_after():
    with pytest.raises(ServiceError) as late, ENGINE_ERRORS:
        raise Stopped(DEADLINE_EXCEEDED, "ran past its time limit of 0.3 s")
    assert (late.value.kind, late.value.code) == (errors.TIMED_OUT, "deadline_exceeded")
    assert getattr(late.value, "retry_after", None) is None  # the same request would run out of time again
    with pytest.raises(ServiceError) as stopped, ENGINE_ERRORS:
        raise Stopped("shutting_down", "was stopped: the server is shutting down")
    assert (stopped.value.kind, stopped.value.code) == (errors.UNAVAILABLE, "shutting_down")
    assert stopped.value.retry_after > 0 and "shutting down" in stopped.value.message


def test_a_code_means_one_status():
    kinds = {}
    for code, kind in server_codes() | engine_codes():
        kinds.setdefault(code, set()).add(kind)
    assert {code for code, k in kinds.items() if len(k) > 1} == TWO_KINDS


def test_one_check_of_compute_one_code():
    """The service checks `compute` before the engine; the engine's own check (for callers in process) gives
    the same code."""
    from adserve.engine import Engine
    eng = Engine()
    fn = eng.compile_definition({"inputs": [{"name": "x", "shape": []}], "expr": "sin(x)"})
    with pytest.raises(engine_errors.EvaluationError) as engine:
        eng.evaluate(fn, {"x": 1.0}, ["grad"])
    with pytest.raises(ServiceError) as service:
        Service().evaluate(fn.id, {"inputs": {"x": 1.0}, "compute": ["grad"]})
    assert engine.value.code == service.value.code == "invalid_compute"
