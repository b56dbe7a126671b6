"""The Open Inference Protocol (v2) mapping of a function, shared by its REST and gRPC adapters.

A model is a registered function (by name or id), with one version, "1".
Its inputs are the function's inputs (`FP64`, `INT64` for integer inputs),
plus `tangent.<input>` and `cotangent`, read only when an output needs them.
The output names say what is computed: `value` (the default), `jvp`,
`gradient.<input>`, `vjp.<input>`, `hvp.<input>`, `jacobian.<input>` and
`hessian.<input>.<input>`. The request parameter `batch` (a boolean) puts
a leading batch axis of one length on every input and output.

`metadata` describes a model; `evaluation` turns an inference (tensors as
flat NumPy arrays, already decoded from their wire form by the adapter) into
the service's evaluation body and `outputs` picks the asked-for tensors out
of its result. Errors are `ServiceError`s, so each adapter answers them with
its status table. No AD here: the service computes.
"""

import math
from dataclasses import dataclass

import numpy as np

from .. import __version__
from .errors import BAD_REQUEST, NOT_FOUND, UNPROCESSABLE, ServiceError
from .tensors import MAX_DIMS, TensorError, decode

VERSION = "1"  # a function never changes under its id; a name moved to another one is another model
PLATFORM = "adserve"
EXTENSIONS = ["binary_tensor_data", "parameters"]
DATATYPES = {"FP64": np.dtype("<f8"), "INT64": np.dtype("<i8")}
_DTYPE_NAMES = {"float64": "FP64", "int64": "INT64"}
_PER_INPUT = ("gradient", "vjp", "hvp", "jacobian")  # output kinds named `<kind>.<input>`
_SCALAR_ONLY = {"gradient", "hvp", "hessian"}


def _invalid(code: str, message: str) -> ServiceError:
    return ServiceError(UNPROCESSABLE, code, message)


def _malformed(code: str, message: str) -> ServiceError:
    return ServiceError(BAD_REQUEST, code, message)


def server_metadata() -> dict:
    return {"name": "adserve", "version": __version__, "extensions": EXTENSIONS}


@dataclass(frozen=True)
class Tensor:
    """One input as sent: its name, datatype, shape and elements (a flat array of the datatype), made by
    `from_bytes` or `from_values`, which check that they agree."""

    name: str
    datatype: str
    shape: tuple
    data: np.ndarray


def _dtype(name: str, datatype) -> np.dtype:
    """The NumPy dtype of a served datatype (little-endian, as the protocol's raw bytes are)."""
    if datatype not in DATATYPES:
        raise _invalid("invalid_datatype", f"input {name[:100]!r}: datatype {str(datatype)[:20]!r} is not "
                                           f"served; send {' or '.join(DATATYPES)}")
    return DATATYPES[datatype]


def _shape(name: str, shape) -> tuple:
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_DIMS or \
            any(type(d) is not int or d < 0 for d in shape):
        raise _malformed("invalid_tensor_data", f"input {name[:100]!r}: shape must be a list of at most "
                                                f"{MAX_DIMS} non-negative integers, not {str(shape)[:60]}")
    return tuple(shape)


def from_bytes(name: str, datatype, shape, raw) -> Tensor:
    """An input sent as raw bytes (REST's binary extension, gRPC's raw_input_contents)."""
    dtype, shape = _dtype(name, datatype), _shape(name, shape)
    need = math.prod(shape) * dtype.itemsize
    if len(raw) != need:
        raise _malformed("invalid_tensor_data", f"input {name[:100]!r} has {len(raw)} bytes of data, but "
                                                f"{datatype} of shape {list(shape)} needs {need}")
    return Tensor(name, datatype, shape, np.frombuffer(raw, dtype=dtype))


def from_values(name: str, datatype, shape, values) -> Tensor:
    """An input sent as numbers (REST's JSON data, flat or nested; gRPC's typed contents)."""
    dtype, shape = _dtype(name, datatype), _shape(name, shape)
    values = list(values) if not isinstance(values, list) else values  # a protobuf repeated field
    try:
        if datatype == "FP64":  # numbers, or the strings "NaN", "Infinity", "-Infinity"
            data = decode(values, f"input {name[:100]!r}")
        else:
            data = np.array(values)
            if data.size and data.dtype.kind not in "iu":
                raise TensorError(f"input {name[:100]!r}", f"holds {data.dtype.name} values; INT64 takes integers")
            data = data.astype(dtype)
    except TensorError as e:
        raise _malformed("invalid_tensor_data", str(e)) from None
    except (ValueError, OverflowError, TypeError) as e:  # ragged lists, integers past 64 bits
        raise _malformed("invalid_tensor_data", f"input {name[:100]!r}: {e}") from None
    data = data.reshape(-1)
    if data.size != math.prod(shape):
        raise _malformed("invalid_tensor_data", f"input {name[:100]!r} has {data.size} elements, but its "
                                                f"shape {list(shape)} needs {math.prod(shape)}")
    return Tensor(name, datatype, shape, data)


class Model:
    """A function as the protocol sees it, from the service's info."""

    def __init__(self, name: str, info: dict):
        self.name, self.id = name, info["id"]  # evaluated by id: the name may move meanwhile
        self.shapes = {i["name"]: tuple(i["shape"]) for i in info["inputs"]}
        self.datatypes = {i["name"]: _DTYPE_NAMES.get(i.get("dtype", "float64"), "FP64") for i in info["inputs"]}
        self.differentiable = [n for n in self.shapes if self.datatypes[n] == "FP64"]
        self.output_shape = tuple(info["output_shape"])

    @classmethod
    def of(cls, service, name: str, version: str = "") -> "Model":
        if version not in ("", VERSION):
            raise ServiceError(NOT_FOUND, "unknown_version", f"model {name[:100]!r} has no version "
                                                             f"{version[:20]!r}; its only version is {VERSION}")
        return cls(name, service.info(name))

    def input_specs(self) -> list:
        """(name, datatype, shape) of every tensor a request may send: the function's inputs first."""
        return ([(n, self.datatypes[n], self.shapes[n]) for n in self.shapes]
                + [(f"tangent.{n}", "FP64", self.shapes[n]) for n in self.differentiable]
                + [("cotangent", "FP64", self.output_shape)])

    def output_specs(self) -> list:
        """(name, shape) of every output a request may ask for."""
        scalar, out, specs = self.output_shape == (), self.output_shape, [("value", self.output_shape)]
        for n in self.differentiable:
            shape = self.shapes[n]
            specs += [(f"gradient.{n}", shape)] if scalar else []
            specs += [(f"vjp.{n}", shape)]
            specs += [(f"hvp.{n}", shape)] if scalar else []
            specs += [(f"jacobian.{n}", out + shape)]
        specs.append(("jvp", out))
        if scalar:
            specs += [(f"hessian.{a}.{b}", self.shapes[a] + self.shapes[b])
                      for a in self.differentiable for b in self.differentiable]
        return specs

    def metadata(self) -> dict:
        return {"name": self.name, "versions": [VERSION], "platform": PLATFORM,
                "inputs": [{"name": n, "datatype": t, "shape": list(s)} for n, t, s in self.input_specs()],
                "outputs": [{"name": n, "datatype": "FP64", "shape": list(s)} for n, s in self.output_specs()]}

    def evaluation(self, tensors: list, outputs: list | None, parameters: dict) -> tuple[dict, list]:
        """(the service's evaluation body, the outputs to answer as (name, path into the result))."""
        batch = parameters.get("batch", False)
        if not isinstance(batch, bool):
            raise _invalid("invalid_parameter", f"the parameter batch must be a boolean, not {batch!r:.40}")
        chosen = self._outputs(["value"] if not outputs else outputs)
        kinds = list(dict.fromkeys(path[0] for _, path in chosen))
        given = self._arrays(tensors, batch)
        inputs = {n: given.pop(n) for n in self.shapes if n in given}
        missing = [n for n in self.shapes if n not in inputs]
        if missing:
            raise _invalid("missing_input", f"missing input {missing[0]!r} (model {self.name[:100]!r} takes "
                                            f"{', '.join(self.shapes)})")
        body = {"inputs": {n: a if self.datatypes[n] == "FP64" else a.tolist() for n, a in inputs.items()},
                "compute": kinds, "batch": batch}
        if "jvp" in kinds or "hvp" in kinds:
            body["tangent"] = self._tangent(given, inputs, batch)
        if "vjp" in kinds:
            if "cotangent" not in given:
                raise _invalid("missing_input", "the vjp outputs need the input cotangent (shaped like value)")
            body["cotangent"] = given["cotangent"]
        wrt = self.differentiable if "tangent" in body else \
            [n for n in self.shapes if any(n in path[1:] for _, path in chosen)]
        if wrt and wrt != list(self.shapes):
            body["wrt"] = wrt
        return body, chosen

    def _outputs(self, names: list) -> list:
        """(name, path) of each requested output: ("value",), ("gradient", x), ("hessian", a, b)..."""
        known = dict(self.output_specs())
        chosen = []
        for name in names:
            if name not in known:
                kind = str(name).partition(".")[0]
                why = (f"; {kind} needs a scalar value, and this model's value has shape {list(self.output_shape)}"
                       if kind in _SCALAR_ONLY and self.output_shape != () else "")
                raise _invalid("unknown_output", f"model {self.name[:100]!r} has no output {str(name)[:100]!r}{why}; "
                                                 f"its outputs are {', '.join(known)}")
            chosen.append((name, self._path(name)))
        if len({n for n, _ in chosen}) != len(chosen):
            raise _invalid("unknown_output", "an output is asked for twice")
        return chosen

    def _path(self, name: str) -> tuple:
        kind, _, rest = name.partition(".")
        if kind == "hessian":  # input names may hold dots: split where both halves are inputs
            for a in self.differentiable:
                if rest.startswith(a + ".") and rest[len(a) + 1:] in self.shapes:
                    return kind, a, rest[len(a) + 1:]
        return (kind, rest) if rest else (kind,)

    def _arrays(self, tensors: list, batch: bool) -> dict:
        """Each tensor checked against its spec and shaped as the service takes it (batched or not)."""
        specs = {n: (t, s) for n, t, s in self.input_specs()}
        arrays, points = {}, None
        for t in tensors:
            if t.name not in specs:
                raise _invalid("unknown_input", f"model {self.name[:100]!r} has no input {t.name[:100]!r}; "
                                                f"its inputs are {', '.join(specs)}")
            if t.name in arrays:
                raise _invalid("unknown_input", f"the input {t.name[:100]!r} is sent twice")
            datatype, shape = specs[t.name]
            if t.datatype != datatype:
                raise _invalid("invalid_datatype", f"input {t.name!r} is {datatype}, not {str(t.datatype)[:20]}")
            sent = tuple(t.shape)
            lead = sent[:1] if batch else ()
            if (batch and not sent) or sent[len(lead):] not in (shape, (1,) if shape == () else shape):
                takes = f"[B] + {list(shape)} with batch=true" if batch else f"{list(shape)}"
                hint = ("; for a batch of points on a leading axis, send the request parameter batch=true"
                        if not batch and sent[1:] == shape else "")
                raise _invalid("invalid_shape", f"input {t.name!r} has shape {list(sent)}, but the model "
                                                f"takes {takes}{hint}")
            if batch:
                if points is not None and lead[0] != points:
                    raise _invalid("invalid_shape", f"input {t.name!r} has {lead[0]} points on its batch axis, "
                                                    f"the inputs before it {points}")
                points = lead[0]
            arrays[t.name] = t.data.reshape(lead + shape)
        return arrays

    def _tangent(self, given: dict, inputs: dict, batch: bool) -> dict:
        """The tangent of every differentiable input: a tangent not sent is zero."""
        sent = [n for n in self.differentiable if f"tangent.{n}" in given]
        if not sent:
            raise _invalid("missing_input", "the jvp and hvp outputs need at least one tangent."
                                            f"<input> ({', '.join('tangent.' + n for n in self.differentiable)}); "
                                            "a tangent not sent is zero")
        return {n: given[f"tangent.{n}"] if n in sent else np.zeros(inputs[n].shape) for n in self.differentiable}


def outputs(result: dict, chosen: list) -> list:
    """(name, float64 array) of each chosen output, from the service's result."""
    picked = []
    for name, path in chosen:
        node = result
        for key in path:
            node = node[key]
        picked.append((name, np.asarray(node, dtype=np.float64)))
    return picked
