"""Pydantic models of the REST bodies, for the OpenAPI document (/docs) only.

Requests are parsed by hand (orjson, then `evaluation.parse` and the engine),
so that every error has the contract's shape; these models describe them.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from adserve.engine import COMPUTE_KINDS

from . import optimize

TENSOR_DOC = ('A number, a row-major nested list of numbers, or {"dtype": "float64", "shape": [...], '
              '"b64": "..."} (base64 of little-endian bytes). "NaN", "Infinity" and "-Infinity" stand for '
              'non-finite values. {"ref": "..."} stands for a tensor held by the server (POST /v1/tensors).')


class B64Tensor(BaseModel):
    dtype: Literal["float64"]
    shape: list[int]
    b64: str = Field(description="base64 of the little-endian float64 bytes, row-major")


class TensorRef(BaseModel):
    """A tensor held by the server (POST /v1/tensors), by its ref."""

    model_config = ConfigDict(extra="forbid")
    ref: str = Field(pattern="^[0-9a-f]{64}$")


Tensor = float | Literal["NaN", "Infinity", "-Infinity"] | list[Any] | B64Tensor | TensorRef


class InputSpec(BaseModel):
    name: str
    shape: list[int] = Field(description="[] for a scalar")


class Definition(BaseModel):
    """`inputs` and exactly one of `expr`, `program`, `graph`."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}],
         "expr": "log(x1) + x1*x2 - sin(x2)"}]})
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                             description="points this name at the function (a later registration may move it); "
                                         "the name is not part of the definition's id")
    inputs: list[InputSpec]
    expr: str | None = Field(None, description="one expression in Python syntax over the input names")
    program: str | None = Field(None, description="source of one `def f(<inputs>): ...` in the Python subset")
    graph: dict[str, Any] | None = Field(None, description="canonical node list; schema at GET /v1/schema/graph")


class Evaluation(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"inputs": {"x1": 2.0, "x2": 5.0}, "compute": ["value", "gradient"]}]})
    inputs: dict[str, Tensor] = Field(description=TENSOR_DOC)
    compute: list[Literal[COMPUTE_KINDS]] = ["value"]
    tangent: dict[str, Tensor] | None = Field(None, description="for jvp and hvp: one entry per input")
    cotangent: Tensor | None = Field(None, description="for vjp: output shape")
    batch: bool = Field(False, description="every tensor has one extra leading axis of the same length")
    wrt: list[str] | None = Field(None, description="the inputs to differentiate (the others are held constant); "
                                                    "default: every input")
    timeout_ms: int | None = Field(None, gt=0, description="stop the computation after this many milliseconds: 504 "
                                   "deadline_exceeded (the server's ADSERVE_MAX_EVAL_SECONDS applies in any case)")


class EvaluationWithFunction(Evaluation):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"function": Definition.model_config["json_schema_extra"]["examples"][0],
         "inputs": {"x1": 2.0, "x2": 5.0}, "compute": ["value", "gradient"]}]})
    function: Definition


class FunctionInfo(BaseModel):
    id: str
    name: str | None = Field(None, description="the name that points at it, if any (or the name it was asked by)")
    inputs: list[InputSpec]
    output_shape: list[int]
    n_nodes: int


class FunctionList(BaseModel):
    functions: list[FunctionInfo] = Field(description="in id order")
    next: str | None = Field(None, description="present when there are more: pass it as ?after= for the next page")


class HeldTensor(BaseModel):
    ref: str = Field(description="sha256 (hex) of the text '<dtype>\\n<sizes joined by commas>\\n' followed by "
                                 "the tensor's little-endian bytes; {\"ref\": ref} stands for the tensor in "
                                 "inputs, tangent and cotangent")
    shape: list[int]
    dtype: Literal["float64", "int64"]
    nbytes: int


class EvaluationResult(BaseModel):
    value: Tensor | None = None
    gradient: dict[str, Tensor] | None = None
    jvp: Tensor | None = None
    vjp: dict[str, Tensor] | None = None
    hvp: dict[str, Tensor] | None = None
    jacobian: dict[str, Tensor] | None = None
    hessian: dict[str, dict[str, Tensor]] | None = None
    trace: list[dict[str, Any]] | None = Field(None, description="one row per variable: name, expr, shape, "
                                                                   "output, value, tangent?, adjoint?")
    cached: bool


class Minimization(BaseModel):
    """The fields of the protobuf `MinimizeRequest` (the function is the one in the path)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"x0": {"x": [-1.0, -1.0]}, "method": "lbfgs", "max_iter": 200, "gtol": 1e-6}]})
    id: str | None = Field(None, description="may repeat the id in the path")
    x0: dict[str, Tensor] = Field(description="the starting point, one entry per input. " + TENSOR_DOC)
    method: Literal[tuple(optimize.METHODS)] = optimize.DEFAULT_METHOD
    max_iter: int = Field(optimize.DEFAULT_MAX_ITER, ge=1, le=optimize.MAX_ITER)
    gtol: float = Field(optimize.DEFAULT_GTOL, ge=0,
                        description="stop once the largest absolute gradient component is at most this")


class MinimizeProgress(BaseModel):
    """One line of the NDJSON answer; iteration 0 is x0, the last line has `done` true."""

    iteration: int
    x: dict[str, Tensor]
    value: float | Literal["NaN", "Infinity", "-Infinity"]
    grad_norm: float | Literal["NaN", "Infinity", "-Infinity"] = Field(
        description="the largest absolute component of the gradient at x")
    done: bool
    message: str = Field(description="on the last line: why the optimiser stopped")
    success: bool = Field(description="on the last line: whether the optimiser reports convergence")


class ErrorDetail(BaseModel):
    code: str = Field(description="snake_case")
    message: str
    location: dict[str, Any] | None = Field(None, description='{"line", "column"} or {"node"}')


class ErrorBody(BaseModel):
    error: ErrorDetail


# bodies parsed by hand, and the NDJSON lines of the minimize stream
REQUEST_MODELS = (Definition, Evaluation, EvaluationWithFunction, Minimization, MinimizeProgress)


def request_components() -> dict:
    """JSON Schemas of the models FastAPI does not see, keyed by name, for `components.schemas`."""
    _, top = models_json_schema([(m, "validation") for m in REQUEST_MODELS],
                                ref_template="#/components/schemas/{model}")
    return top["$defs"]


def tensor_upload() -> dict:
    """`openapi_extra` of POST /v1/tensors: a JSON tensor, or raw bytes with ?shape=&dtype=."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"description": TENSOR_DOC}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                "description": "little-endian, row-major; ?shape=3,4&dtype=float64"}}}}}


def request_body(model) -> dict:
    """`openapi_extra` for a route whose JSON body is parsed by hand."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}
