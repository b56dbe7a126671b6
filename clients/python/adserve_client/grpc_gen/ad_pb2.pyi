from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("shape", "data", "ref")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: _containers.RepeatedScalarFieldContainer[float]
    ref: str
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[_Iterable[float]] = ..., ref: _Optional[str] = ...) -> None: ...

class HeldTensor(_message.Message):
    __slots__ = ("ref", "shape", "dtype", "nbytes")
    REF_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    ref: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    nbytes: int
    def __init__(self, ref: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., nbytes: _Optional[int] = ...) -> None: ...

class InputSpec(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class Definition(_message.Message):
    __slots__ = ("inputs", "expr", "program", "graph", "name", "entry")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    EXPR_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[InputSpec]
    expr: str
    program: str
    graph: Graph
    name: str
    entry: str
    def __init__(self, inputs: _Optional[_Iterable[_Union[InputSpec, _Mapping]]] = ..., expr: _Optional[str] = ..., program: _Optional[str] = ..., graph: _Optional[_Union[Graph, _Mapping]] = ..., name: _Optional[str] = ..., entry: _Optional[str] = ...) -> None: ...

class Graph(_message.Message):
    __slots__ = ("inputs", "nodes", "outputs")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[InputSpec]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    outputs: _containers.RepeatedCompositeFieldContainer[Arg]
    def __init__(self, inputs: _Optional[_Iterable[_Union[InputSpec, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[Arg, _Mapping]]] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("id", "op", "args", "params", "bodies", "outputs")
    class BodiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Graph
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Graph, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    BODIES_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    op: str
    args: _containers.RepeatedCompositeFieldContainer[Arg]
    params: _struct_pb2.Struct
    bodies: _containers.MessageMap[str, Graph]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., op: _Optional[str] = ..., args: _Optional[_Iterable[_Union[Arg, _Mapping]]] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., bodies: _Optional[_Mapping[str, Graph]] = ..., outputs: _Optional[_Iterable[str]] = ...) -> None: ...

class Arg(_message.Message):
    __slots__ = ("ref", "number", "literal")
    REF_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    LITERAL_FIELD_NUMBER: _ClassVar[int]
    ref: str
    number: float
    literal: Literal
    def __init__(self, ref: _Optional[str] = ..., number: _Optional[float] = ..., literal: _Optional[_Union[Literal, _Mapping]] = ...) -> None: ...

class Literal(_message.Message):
    __slots__ = ("shape", "value", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    value: float
    data: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., value: _Optional[float] = ..., data: _Optional[_Iterable[float]] = ...) -> None: ...

class FunctionInfo(_message.Message):
    __slots__ = ("id", "inputs", "output_shape", "n_nodes", "created", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    N_NODES_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    inputs: _containers.RepeatedCompositeFieldContainer[InputSpec]
    output_shape: _containers.RepeatedScalarFieldContainer[int]
    n_nodes: int
    created: bool
    name: str
    def __init__(self, id: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[InputSpec, _Mapping]]] = ..., output_shape: _Optional[_Iterable[int]] = ..., n_nodes: _Optional[int] = ..., created: _Optional[bool] = ..., name: _Optional[str] = ...) -> None: ...

class ListFunctionsRequest(_message.Message):
    __slots__ = ("limit", "after")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    limit: int
    after: str
    def __init__(self, limit: _Optional[int] = ..., after: _Optional[str] = ...) -> None: ...

class ListFunctionsResponse(_message.Message):
    __slots__ = ("functions", "next")
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    functions: _containers.RepeatedCompositeFieldContainer[FunctionInfo]
    next: str
    def __init__(self, functions: _Optional[_Iterable[_Union[FunctionInfo, _Mapping]]] = ..., next: _Optional[str] = ...) -> None: ...

class GetFunctionRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("id", "function", "inputs", "compute", "tangent", "cotangent", "batch", "wrt", "timeout_ms")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    class TangentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    TANGENT_FIELD_NUMBER: _ClassVar[int]
    COTANGENT_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    function: Definition
    inputs: _containers.MessageMap[str, Tensor]
    compute: _containers.RepeatedScalarFieldContainer[str]
    tangent: _containers.MessageMap[str, Tensor]
    cotangent: Tensor
    batch: bool
    wrt: _containers.RepeatedScalarFieldContainer[str]
    timeout_ms: int
    def __init__(self, id: _Optional[str] = ..., function: _Optional[_Union[Definition, _Mapping]] = ..., inputs: _Optional[_Mapping[str, Tensor]] = ..., compute: _Optional[_Iterable[str]] = ..., tangent: _Optional[_Mapping[str, Tensor]] = ..., cotangent: _Optional[_Union[Tensor, _Mapping]] = ..., batch: _Optional[bool] = ..., wrt: _Optional[_Iterable[str]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("value", "gradient", "jvp", "vjp", "hvp", "jacobian", "hessian", "cached", "trace")
    class GradientEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    class VjpEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    class HvpEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    class JacobianEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    class HessianEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TensorMap
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TensorMap, _Mapping]] = ...) -> None: ...
    VALUE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_FIELD_NUMBER: _ClassVar[int]
    JVP_FIELD_NUMBER: _ClassVar[int]
    VJP_FIELD_NUMBER: _ClassVar[int]
    HVP_FIELD_NUMBER: _ClassVar[int]
    JACOBIAN_FIELD_NUMBER: _ClassVar[int]
    HESSIAN_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    value: Tensor
    gradient: _containers.MessageMap[str, Tensor]
    jvp: Tensor
    vjp: _containers.MessageMap[str, Tensor]
    hvp: _containers.MessageMap[str, Tensor]
    jacobian: _containers.MessageMap[str, Tensor]
    hessian: _containers.MessageMap[str, TensorMap]
    cached: bool
    trace: _containers.RepeatedCompositeFieldContainer[TraceRow]
    def __init__(self, value: _Optional[_Union[Tensor, _Mapping]] = ..., gradient: _Optional[_Mapping[str, Tensor]] = ..., jvp: _Optional[_Union[Tensor, _Mapping]] = ..., vjp: _Optional[_Mapping[str, Tensor]] = ..., hvp: _Optional[_Mapping[str, Tensor]] = ..., jacobian: _Optional[_Mapping[str, Tensor]] = ..., hessian: _Optional[_Mapping[str, TensorMap]] = ..., cached: _Optional[bool] = ..., trace: _Optional[_Iterable[_Union[TraceRow, _Mapping]]] = ...) -> None: ...

class TensorMap(_message.Message):
    __slots__ = ("entries",)
    class EntriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.MessageMap[str, Tensor]
    def __init__(self, entries: _Optional[_Mapping[str, Tensor]] = ...) -> None: ...

class TraceRow(_message.Message):
    __slots__ = ("name", "expr", "shape", "output", "value", "tangent", "adjoint")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPR_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TANGENT_FIELD_NUMBER: _ClassVar[int]
    ADJOINT_FIELD_NUMBER: _ClassVar[int]
    name: str
    expr: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    output: bool
    value: Tensor
    tangent: Tensor
    adjoint: Tensor
    def __init__(self, name: _Optional[str] = ..., expr: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., output: _Optional[bool] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ..., tangent: _Optional[_Union[Tensor, _Mapping]] = ..., adjoint: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class MinimizeRequest(_message.Message):
    __slots__ = ("id", "function", "x0", "method", "max_iter", "gtol")
    class X0Entry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    X0_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MAX_ITER_FIELD_NUMBER: _ClassVar[int]
    GTOL_FIELD_NUMBER: _ClassVar[int]
    id: str
    function: Definition
    x0: _containers.MessageMap[str, Tensor]
    method: str
    max_iter: int
    gtol: float
    def __init__(self, id: _Optional[str] = ..., function: _Optional[_Union[Definition, _Mapping]] = ..., x0: _Optional[_Mapping[str, Tensor]] = ..., method: _Optional[str] = ..., max_iter: _Optional[int] = ..., gtol: _Optional[float] = ...) -> None: ...

class MinimizeProgress(_message.Message):
    __slots__ = ("iteration", "x", "value", "grad_norm", "done", "message", "success")
    class XEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    x: _containers.MessageMap[str, Tensor]
    value: float
    grad_norm: float
    done: bool
    message: str
    success: bool
    def __init__(self, iteration: _Optional[int] = ..., x: _Optional[_Mapping[str, Tensor]] = ..., value: _Optional[float] = ..., grad_norm: _Optional[float] = ..., done: _Optional[bool] = ..., message: _Optional[str] = ..., success: _Optional[bool] = ...) -> None: ...
