"""Pydantic models of the REST bodies, for the OpenAPI document (/docs) only.

Requests are parsed by hand (orjson, then `evaluation.parse` and the engine),
so that every error has the contract's shape; these models describe them.
Shared types are named components (`Tensor`, `TensorMap`, `Real`, `ComputeKind`,
`Transform`, `ErrorCode`, `JsonObject`, `Hessian`), so a generated client has
one type for each rather than an inlined union (or one more class) at every use.

The document is written for client generators as well as readers, and a typed
generator makes a class (a module) of every object and every `enum` it meets.
So: the two evaluate routes share one `Evaluation` (the route's body adds
"`function` required", or "no `function`", by `allOf` of the one reference);
an enum is a string constrained by `allOf: [{enum, oneOf of described consts}]`
(validators and ReDoc enforce and show it; generators keep it a string, the
allowed values in its description); the open objects (`JsonObject`) are
untyped; and the minimize stream's line is described where the stream is.
openapi-python-client then makes 14 model files, each one of the API's objects.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import models_json_schema
from typing_extensions import TypeAliasType

from adserve.engine.evaluation import KIND_DOCS, SOURCE_TRANSFORMS

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



def enum_schema(values: dict, doc: str = "") -> dict:
    """The JSON Schema of a string enum whose every value has its own description ({value: description}).

    The constraint is one `allOf` member: `enum` (what validators and most tools read) beside the same values as
    `oneOf` of `const`s with a `description` each (what JSON Schema 2020-12 documents a value with; /docs and
    /redoc show them). Outside, the schema is a string described by `doc` and its values: openapi-python-client
    makes a string of it, not an enum class per enum (6 more model files), nor a `Literal` union of `const`s
    alone, whose parser accepts only the first value (openapi-python-client issue #1044)."""
    listed = "one of " + ", ".join(f"`{v}`" for v in values)
    return {"type": "string", "description": f"{doc} ({listed})" if doc else listed,
            "allOf": [{"enum": list(values),
                       "oneOf": [{"const": value, "description": d} for value, d in values.items()]}]}


def described(name: str, values: dict, doc: str) -> TypeAliasType:
    """A named string enum of `values` ({value: description}), described as a whole by `doc`."""
    return TypeAliasType(name, Annotated[Literal[tuple(values)], WithJsonSchema(enum_schema(values, doc))])


NonFinite = described("NonFinite", {"NaN": "not a number (IEEE 754 NaN)", "Infinity": "positive infinity",
                                    "-Infinity": "negative infinity"},
                      "A non-finite float64, which JSON has no number for")
# the dtype of integer data: an input's, a held tensor's (one named schema, so clients make one type of it)
Dtype = described("Dtype", {"float64": "IEEE 754 double precision: every differentiable value",
                            "int64": "64-bit signed integers: integer data (indices), never differentiated"},
                  "An element type")
Real = TypeAliasType("Real", Annotated[float | NonFinite, Field(
    description='a number; "NaN", "Infinity" and "-Infinity" stand for the non-finite values')])
Tensor = TypeAliasType("Tensor", Annotated[float | NonFinite | list[Any] | B64Tensor | TensorRef,
                                           Field(description=TENSOR_DOC)])
TensorMap = TypeAliasType("TensorMap", Annotated[dict[str, Tensor], Field(
    description="one tensor per input name")])
# the open objects (a graph, an error's location, a trace row): one named schema, untyped, so a generator gives
# a plain dict for each (an object schema would be a class wrapping one)
JsonObject = TypeAliasType("JsonObject", Annotated[dict[str, Any], WithJsonSchema(
    {"description": "a JSON object; the property that holds it says which keys"})])
Hessian = TypeAliasType("Hessian", Annotated[dict[str, TensorMap], Field(
    description="hessian[a][b]: the block of second derivatives in inputs a and b")])

ComputeKind = described("ComputeKind", {kind: f"`{kind}` of the answer: {doc}" for kind, doc in KIND_DOCS.items()},
                        "What an evaluation computes; each kind is a key of the answer.")
Transform = described("Transform", {t: f"the kernel of the `{kind}` compute kind: {KIND_DOCS[kind]}"
                                    for t, kind in SOURCE_TRANSFORMS.items()},
                      "A transform whose generated source GET /v1/functions/{function_id}/source gives.")

# The codes clients act on: code -> (HTTP status, what it means and what to do). The OpenAPI document's
# ErrorCode and the table of docs/rest.md#errors (python -m adserve.server.docgen) are written from it. The
# engine's other codes pass through too (`not_scalar`, ...: the message says what to fix), so `ErrorDetail.code`
# is one of these or any string.
ERRORS = {
    "malformed_json": (400, "the body is not JSON (the message gives orjson's position)"),
    "function_not_found": (404, "no function with that id or name: register it (POST /v1/functions), or send the "
                                "definition as `function`"),
    "unknown_tensor": (404, "a `{\"ref\"}` the server does not hold (never sent, or evicted): send the tensor again"),
    "invalid_name": (422, "a definition's `name` outside the rule `^[A-Za-z0-9_.-]{1,64}$`"),
    "invalid_parameter": (422, "a bad `limit` or `after` of a listing, or a bad `shape` of a raw tensor upload"),
    "not_found": (404, "no such route"),
    "method_not_allowed": (405, "the route exists, the method does not (the `Allow` header lists those it takes)"),
    "unauthenticated": (401, "keys are configured (`ADSERVE_API_KEYS`) and the call has none, or a wrong one "
                             "(`WWW-Authenticate: Bearer`): send `Authorization: Bearer <key>` or `x-api-key`"),
    "body_too_large": (413, "over `ADSERVE_MAX_BODY_BYTES`: send less, or hold large tensors (POST /v1/tensors)"),
    "text_too_long": (413, "an expr or program over `ADSERVE_MAX_EXPR_CHARS`"),
    "too_deep": (413, "an expr or program nested deeper than `ADSERVE_MAX_EXPR_DEPTH`"),
    "batch_too_large": (413, "a batch over `ADSERVE_MAX_BATCH` points: split it"),
    "limit_exceeded": (413, "one of the engine's size or cost limits (the message names it and by how much)"),
    "request_too_large": (413, "the request's estimated peak memory (values, reverse-mode tapes, batch copies, "
                               "results and the answer) is over `ADSERVE_MAX_REQUEST_BYTES` (512 MiB by default); "
                               "the message gives the estimate: ask for less at once (a smaller batch, `hvp` "
                               "instead of `hessian`)"),
    "rate_limited": (429, "over `ADSERVE_RATE_LIMIT_PER_SECOND` for this key: call again after `Retry-After` seconds"),
    "too_many_optimizers": (429, "a minimize while `ADSERVE_MAX_OPTIMIZERS` runs are in flight: call again after "
                                 "`Retry-After` (1) seconds"),
    "invalid_evaluation": (422, "the evaluation is not a JSON object"),
    "invalid_definition": (422, "the definition is not a JSON object, or not a valid one (the message says why)"),
    "invalid_request": (422, "a path or query parameter of the wrong type (the message names it)"),
    "unknown_field": (422, "a field the body does not take (the message names it)"),
    "missing_field": (422, "a field the body needs is absent (the message names it)"),
    "invalid_field": (422, "a field of the wrong type or value (the message names it)"),
    "invalid_compute": (422, "`compute` is not a non-empty list of compute kinds"),
    "invalid_tensor": (422, "a tensor that is none of the forms of `Tensor`, or not of its input's shape and dtype"),
    "unknown_transform": (422, "a `transform` of GET /v1/functions/{id}/source that is not one of `Transform`"),
    "syntax_error": (422, "expr or program text that does not parse; `location` has its line and column"),
    "shape_mismatch": (422, "shapes that do not fit (an input's, or an operation's operands'); `location` says "
                            "where"),
    "while_limit": (422, "a while loop ran past `ADSERVE_MAX_WHILE_ITERATIONS`, or its variables stopped "
                          "changing; `location` has its line: does its condition ever become false?"),
    "cancelled": (503, "the client went away before the answer (no client sees it but in logs and metrics)"),
    "shutting_down": (503, "the server was stopped (SIGTERM) and this evaluation was still computing when the "
                           "grace period ended: send it again after `Retry-After` (1) seconds; another replica "
                           "answers"),
    "registry_unavailable": (503, "with Redis configured and unreachable, an id or name this replica does not "
                                  "hold (another replica may have registered it, and this one cannot ask): call "
                                  "again after `Retry-After` seconds (the same call answers once Redis is back)"),
    "deadline_exceeded": (504, "the evaluation ran past its `timeout_ms` or `ADSERVE_MAX_EVAL_SECONDS` and was "
                               "stopped; the message says how far it got"),
    "internal_error": (500, "a bug in the server (logged with its traceback); never for bad input")}
ERROR_CODES = tuple(ERRORS)
ErrorCode = described("ErrorCode", {code: f"{status}: {doc}" for code, (status, doc) in ERRORS.items()},
                      "The error codes clients act on; others (the engine's own) may appear: see the message.")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def errors_table() -> str:
    """docs/rest.md's table of the error codes (between its GENERATED markers), from `ERRORS`."""
    out = ["| status | code | what it means; what to do |", "| --- | --- | --- |"]
    out += [f"| {status} | `{code}` | {_cell(doc)} |" for code, (status, doc) in ERRORS.items()]
    return "\n".join(out) + "\n"


class InputSpec(BaseModel):
    name: str
    shape: list[int] = Field(description="[] for a scalar")
    dtype: Dtype | None = Field(
        None, description='"float64" (the default) or "int64": integer data (indices), never differentiated')


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
    graph: JsonObject | None = Field(None, description="canonical node list; schema at GET /v1/schema/graph")
    entry: str | None = Field(None, description="for a program with several `def`s: the function the inputs go "
                                                "to (default: the last top-level one)")


class Evaluation(BaseModel):
    """An evaluation: of the function in the path (POST /v1/functions/{function_id}/evaluate, which refuses a
    `function`), or of its `function` (POST /v1/evaluate, which needs one)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"function": Definition.model_config["json_schema_extra"]["examples"][0],
         "inputs": {"x1": 2.0, "x2": 5.0}, "compute": ["value", "gradient"]},
        {"inputs": {"x1": 2.0, "x2": 5.0}, "compute": ["value", "gradient"]}]})
    function: Definition | str | None = Field(None, description="POST /v1/evaluate only: the definition to "
                                              "evaluate (registered on the way), or the id or name of a "
                                              "registered function")
    inputs: TensorMap = Field(description=TENSOR_DOC)
    compute: list[ComputeKind] = Field(["value"], description="what to compute, each a key of the answer: "
                                       + ", ".join(f"`{kind}`" for kind in KIND_DOCS))
    tangent: TensorMap | None = Field(None, description="for jvp and hvp: one entry per input")
    cotangent: Tensor | None = Field(None, description="for vjp: output shape")
    batch: bool = Field(False, description="every tensor has one extra leading axis of the same length")
    wrt: list[str] | None = Field(None, description="the inputs to differentiate (the others are held constant); "
                                                    "default: every input")
    timeout_ms: int | None = Field(None, gt=0, description="stop the computation after this many milliseconds: 504 "
                                   "deadline_exceeded (the server's ADSERVE_MAX_EVAL_SECONDS applies in any case)")


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
    dtype: Dtype
    nbytes: int


class EvaluationResult(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"value": 11.652071455223084, "gradient": {"x1": 5.5, "x2": 1.7163378145367738}, "cached": False}]})
    value: Tensor | None = None
    gradient: TensorMap | None = None
    jvp: Tensor | None = None
    vjp: TensorMap | None = None
    hvp: TensorMap | None = None
    jacobian: TensorMap | None = None
    hessian: Hessian | None = None
    trace: list[JsonObject] | None = Field(None, description="one row per variable: name, expr, shape, "
                                                             "output, value, tangent?, adjoint?")
    cached: bool


class Minimization(BaseModel):
    """The fields of the protobuf `MinimizeRequest` (the function is the one in the path)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"x0": {"x": [-1.0, -1.0]}, "method": "lbfgs", "max_iter": 200, "gtol": 1e-6}]})
    id: str | None = Field(None, description="may repeat the id in the path")
    x0: TensorMap = Field(description="the starting point, one entry per input. " + TENSOR_DOC)
    method: Annotated[Literal[tuple(optimize.METHODS)], WithJsonSchema(enum_schema({
        name: f"scipy.optimize.minimize's {scipy}" + (", with Hessian-vector products" if hvp else "")
        for name, (scipy, hvp) in optimize.METHODS.items()}, "the optimiser"))] = optimize.DEFAULT_METHOD
    max_iter: int = Field(optimize.DEFAULT_MAX_ITER, ge=1, le=optimize.MAX_ITER)
    gtol: float = Field(optimize.DEFAULT_GTOL, ge=0,
                        description="stop once the largest absolute gradient component is at most this")


class MinimizeProgress(BaseModel):
    """One line of the NDJSON answer; iteration 0 is x0, the last line has `done` true."""

    iteration: int
    x: TensorMap
    value: Real
    grad_norm: Real = Field(description="the largest absolute component of the gradient at x")
    done: bool
    message: str = Field(description="on the last line: why the optimiser stopped")
    success: bool = Field(description="on the last line: whether the optimiser reports convergence")


class ErrorDetail(BaseModel):
    code: ErrorCode | str = Field(description="snake_case; one of ErrorCode, or one of the engine's own")
    message: str
    location: JsonObject | None = Field(None, description='{"line", "column"} or {"node"}')


class ErrorBody(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"error": {"code": "syntax_error", "message": "invalid syntax", "location": {"line": 1, "column": 7}}}]})
    error: ErrorDetail


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before calling again", "schema": {"type": "integer"}}}
EVALUATION_HEADERS = {
    "x-adserve-backend": {"description": "the tier that computed the answer (for a cached one, the tier that did)",
                          "schema": {"type": "string", "enum": ["interpreter", "python", "numba"]}},
    "Server-Timing": {"description": "compute;dur=<ms> (;desc=parallel for a parallel batch kernel) or "
                                     "cache;desc=hit, kernel;dur=<ms> (of compute, the compiled kernel's own "
                                     "calls) when one ran, compile;desc=pending while the kernel compiles, "
                                     "total;dur=<ms>",
                      "schema": {"type": "string"}, "example": "compute;dur=0.041, total;dur=0.212"}}
_ERROR_DESCRIPTIONS = {400: "not JSON", 401: "no API key, or a wrong one (when the server has keys)",
                       404: "no such function or held tensor", 413: "over a size or cost limit",
                       422: "a wrong definition or evaluation", 429: "over the rate limit or the optimiser cap",
                       503: "the server is shutting down: call again (another replica answers)",
                       504: "past the evaluation's deadline (timeout_ms or the server's)"}


def error_response(status: int) -> dict:
    """A `responses` entry of FastAPI for an error status: the error body, and Retry-After where it is sent."""
    entry = {"model": ErrorBody, "description": _ERROR_DESCRIPTIONS.get(status, "an error")}
    if status in (429, 503):
        entry["headers"] = RETRY_AFTER
    return entry


def json_errors(responses: dict) -> dict:
    """`responses` (of `error_response`) with their bodies declared JSON outright: FastAPI gives a model's body
    the media type of the route's response class, which for the minimize stream is NDJSON."""
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    return {status: {**{k: v for k, v in entry.items() if k != "model"}, "content": body}
            for status, entry in responses.items()}


class _Named(BaseModel):
    """Types only parameters or the error body's anyOf name: carried into components through this model."""

    transform: Transform
    code: ErrorCode


# bodies parsed by hand; the NDJSON line of the minimize stream is described inline in its response (as a
# component it would be one more class of a generated client, which cannot read the stream), its types are
# components; and the types _Named carries
REQUEST_MODELS = (Definition, Evaluation, Minimization)
STREAM_LINES = (MinimizeProgress,)


def request_components() -> dict:
    """JSON Schemas of the models FastAPI does not see, keyed by name, for `components.schemas`."""
    _, top = models_json_schema([(m, "validation") for m in (*REQUEST_MODELS, *STREAM_LINES, _Named)],
                                ref_template="#/components/schemas/{model}")
    for model in (*STREAM_LINES, _Named):
        top["$defs"].pop(model.__name__)
    return top["$defs"]


def stream_line(model) -> dict:
    """The JSON Schema of one line of a stream, whose types are components (`request_components`)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return schema


def tensor_upload() -> dict:
    """`openapi_extra` of POST /v1/tensors: a JSON tensor, or raw bytes with ?shape=&dtype=."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"description": TENSOR_DOC}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                "description": "little-endian, row-major; ?shape=3,4&dtype=float64"}}}}}


def request_body(model, required=(), refused=()) -> dict:
    """`openapi_extra` for a route whose JSON body is parsed by hand: `model`, with the fields this route needs
    (`required`) or refuses (`refused`, JSON Schema's `not: {required}`) beside it in an `allOf` of its one
    reference, which generators take as the model itself."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    if required or refused:
        schema = {"allOf": [schema], **({"required": list(required)} if required else {}),
                  **({"not": {"required": list(refused)}} if refused else {})}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
