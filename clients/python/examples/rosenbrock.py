"""Minimise the Rosenbrock function of 10 variables from x0 = -1 on an adserve server (gRPC address as argument)."""
import sys

import numpy as np
from adserve_client import GrpcClient, expr

rosenbrock = expr("sum(100.0 * (x[1:] - x[:-1]**2)**2 + (1.0 - x[:-1])**2)", x=[10])
with GrpcClient(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051") as client:
    for step in client.minimize(rosenbrock, {"x": -np.ones(10)}, method="newton-cg"):
        print(f"{step.iteration:3d}  f = {step.value:.3e}  |g| = {step.grad_norm:.1e}")
print(step.message, np.round(step.x["x"], 6))
