"""Benchmarks: adserve against JAX and autograd on the same machine, in one run.

`python -m bench` (or `make bench`) times every case in `problems.py`,
interleaving the contenders so drift hits them alike, probes the REST server
for first-answer and restart latency, and writes `docs/benchmarks.md` with a
plot. Results are ratios (ours / primal, ours / rival), never absolute goals.
`transport_steps.py` beside it is a separate script (client step rates over gRPC and REST).
"""
