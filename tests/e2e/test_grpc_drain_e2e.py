"""SIGTERM with gRPC calls in flight: health turns NOT_SERVING, new calls get UNAVAILABLE, the call in
flight goes on for the grace period, then ends with UNAVAILABLE and the process exits; with nothing in flight
it exits at once."""

import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adserve.server.grpc_gen import ad_pb2 as pb
from adserve.server.grpc_gen import ad_pb2_grpc
from server_process import free_port, running_server, wait_until

GRACE = 3
ENV = {"ADSERVE_SHUTDOWN_GRACE_SECONDS": str(GRACE), "ADSERVE_COMPILE": "false"}
LONG = pb.MinimizeRequest(function=pb.Definition(inputs=[pb.InputSpec(name="x", shape=[2000])],
                                                 expr="sum(100.0 * (x[1:] - x[:-1]**2)**2 + (1.0 - x[:-1])**2)"),
                          x0={"x": pb.Tensor(shape=[2000], data=[-1.0] * 2000)}, max_iter=100_000, gtol=0.0)


def health(channel) -> int:
    try:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
    except grpc.RpcError as e:
        return e.code()


def test_draining_with_a_call_in_flight(tmp_path):
    with running_server(tmp_path / "server.log", grpc_port=free_port(), env=ENV) as server, \
            grpc.insecure_channel(server.grpc) as channel:
        assert wait_until(lambda: health(channel) == health_pb2.HealthCheckResponse.SERVING, 5)
        stub = ad_pb2_grpc.DifferentiatorStub(channel)
        call = stub.Minimize(LONG)
        # iterate 0 is x0, sent before the optimiser starts; iterate 1 comes once scipy.optimize has loaded
        # (0.8 s idle, 5 s beside CPU hogs): from then on the run is in flight, streaming iterates
        assert [next(call).iteration for _ in range(2)] == [0, 1]
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        # (within the grace period: health is NOT_SERVING from the signal until the server stops)
        assert wait_until(lambda: health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING, GRACE)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Register(pb.Definition(inputs=[pb.InputSpec(name="x")], expr="x"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in refused.value.details()
        more = 0
        with pytest.raises(grpc.RpcError) as ended:
            for _ in call:
                more += 1
        assert more > 0 and time.monotonic() - sent >= GRACE - 0.5  # it streamed on through the grace period
        # then it was stopped, and told so (never a bare cancel or an internal error)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in ended.value.details()
        server.process.wait(60)
        assert server.process.returncode == 0
        # the service closed after the call ended, not when HTTP (nothing in flight there) had shut down
        log = server.log()
        assert log.index("Minimize UNAVAILABLE") < log.index("Application shutdown complete"), log[-2000:]


def test_nothing_in_flight_exits_without_waiting_for_the_grace_period(tmp_path):
    env = {**ENV, "ADSERVE_SHUTDOWN_GRACE_SECONDS": "3600"}  # waiting for it would outlast the wait below
    with running_server(tmp_path / "server.log", grpc_port=free_port(), env=env) as server:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(120)
        assert server.process.returncode == 0
