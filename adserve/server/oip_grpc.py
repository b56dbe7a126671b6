"""The Open Inference Protocol (v2) over gRPC: `inference.GRPCInferenceService`, on the gRPC port.

ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata and
ModelInfer, as `tritonclient.grpc` calls them; the rest of Triton's service
is not served (UNIMPLEMENTED). Inputs come as `raw_input_contents` (what
tritonclient sends) or typed `contents`; outputs go back the same way as the
inputs came. The mapping is `oip_codec`'s, as for REST; a `ServiceError`
ends the call with its status from `status.GRPC` (INVALID_ARGUMENT,
NOT_FOUND, ...) and the same message as REST. The messages live in a
descriptor pool of their own (see `scripts/gen_proto.sh`).
"""

import asyncio

from . import oip_codec
from .errors import BAD_REQUEST, NOT_FOUND, ServiceError
from .grpc_gen import grpc_service_pb2 as pb
from .grpc_gen import grpc_service_pb2_grpc as pb_grpc
from .oip_codec import Model
from .rpc import _status  # the ad.v1 servicer's error mapping, the same for every gRPC protocol

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
_CONTENTS = {"FP64": "fp64_contents", "INT64": "int64_contents"}  # typed contents field of each datatype


def mount(server) -> None:
    if server.grpc is not None:
        server.grpc.add(SERVICE_NAME, pb_grpc.add_GRPCInferenceServiceServicer_to_server,
                        Inference(server.service), pool=pb.POOL)


class Inference(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service):
        self.service = service

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.service.ready())

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**oip_codec.server_metadata())

    async def ModelReady(self, request, context):
        """Ready when the name (or id) is registered; false, not an error, when it is not (as Triton says)."""
        async with _status(context):
            try:
                await asyncio.to_thread(Model.of, self.service, request.name, request.version)
            except ServiceError as e:
                if e.kind != NOT_FOUND:
                    raise
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request, context):
        async with _status(context):
            meta = (await asyncio.to_thread(Model.of, self.service, request.name, request.version)).metadata()
            tensors = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                            inputs=[tensors(**t) for t in meta["inputs"]],
                                            outputs=[tensors(**t) for t in meta["outputs"]])

    async def ModelInfer(self, request, context):
        async with _status(context):
            return await asyncio.to_thread(self._infer, request)

    def _infer(self, request):
        """Decode, evaluate, encode: the CPU-bound part, run in a worker thread."""
        model = Model.of(self.service, request.model_name, request.model_version)
        raw = bool(request.raw_input_contents)
        evaluation, chosen = model.evaluation(_tensors(request), [o.name for o in request.outputs],
                                              {k: _value(p) for k, p in request.parameters.items()})
        result = self.service.evaluate(model.id, evaluation)
        answer = pb.ModelInferResponse(model_name=request.model_name, model_version=oip_codec.VERSION,
                                       id=request.id, parameters={"cached": pb.InferParameter(
                                           bool_param=bool(result["cached"]))})
        for name, a in oip_codec.outputs(result, chosen):
            out = answer.outputs.add(name=name, datatype="FP64", shape=a.shape)
            if raw:
                answer.raw_output_contents.append(a.astype("<f8").tobytes())
            else:
                out.contents.fp64_contents.extend(a.reshape(-1).tolist())
        return answer


def _tensors(request) -> list:
    """The request's inputs, from raw_input_contents (one entry per input, in order) or typed contents."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ServiceError(BAD_REQUEST, "invalid_tensor_data",
                           f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
                           "send one per input, in order, or typed contents for all")
    found = []
    for i, t in enumerate(request.inputs):
        if raw:
            found.append(oip_codec.from_bytes(t.name, t.datatype, list(t.shape), raw[i]))
        else:
            field = _CONTENTS.get(t.datatype, "fp64_contents")  # an unserved datatype is refused by its check
            found.append(oip_codec.from_values(t.name, t.datatype, list(t.shape), getattr(t.contents, field)))
    return found


def _value(parameter: pb.InferParameter):
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)
