"""bench/transport_steps.py runs against a server (no timing asserted: numbers belong in docs/grpc.md)."""

from bench import transport_steps


def test_the_transport_bench_runs(server, capsys):
    transport_steps.main(["--steps", "100", "--http", server.url, "--grpc", server.grpc, "--settle", "0"])
    out = capsys.readouterr().out
    for way in ("gRPC EvaluateStream", "gRPC Evaluate (unary)", "REST (keep-alive)", "gRPC aio EvaluateStream"):
        assert way in out
    assert "steps/s" in out
