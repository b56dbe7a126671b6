"""Server settings: one pydantic-settings class read from `ADSERVE_*` variables.

Command-line flags override the environment (see `cli.py`); every field is
documented in the README's settings table.
"""

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1 << 20


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "adserve"


def default_max_optimizers() -> int:
    """Two optimiser runs per core this process may use (each is one thread of scipy and evaluations)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 2 * (cores or 1)


def default_isolate_workers() -> int:
    """Isolation workers: like compiles, long evaluations leave one usable core to short requests."""
    from adserve.engine.backend import default_workers
    return default_workers()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ADSERVE_", extra="ignore")

    host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(50051, ge=0, le=65535, description="0 leaves gRPC off")
    cache_dir: Path = Field(default_factory=_default_cache_dir, description="compiled code lives here")
    compile: bool = Field(True, description="compile plans with numba in the background (false: interpreter only)")
    python_tier: bool = Field(True, description="until numba has compiled a plan, run scalar-heavy plans' generated "
                              "code in CPython (the python tier) where that beats the interpreter")
    redis_url: str | None = Field(None, description="shared registry and result cache; unset: both in memory")
    redis_timeout_seconds: float = Field(0.25, gt=0, description="per Redis call; a failure opens the breaker")
    redis_result_ttl_seconds: int = Field(3600, ge=0, description="results kept in Redis; 0 keeps none there")
    redis_result_max_bytes: int = Field(8 * MiB, ge=0, description="larger results stay local")
    max_body_bytes: int = Field(16 * MiB, gt=0)
    result_cache_bytes: int = Field(256 * MiB, ge=0, description="0 turns the result cache off")
    tensor_cache_bytes: int = Field(256 * MiB, ge=0, description="tensors held for refs (POST /v1/tensors), an LRU "
                                                                  "per API key of an equal share of this")
    shutdown_grace_seconds: float = Field(10, ge=0, description="on SIGTERM, time to drain requests in flight")
    max_eval_seconds: float = Field(30, gt=0, description="time limit of every evaluation (a request's timeout_ms "
                                    "or gRPC deadline may be shorter); past it the work stops: 504 / DEADLINE_EXCEEDED")
    tls_cert_file: Path | None = Field(None, description="PEM certificate (chain): serve HTTPS and gRPC over TLS")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per line, with the "
                                                "request id of the call it was logged in")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated keys, or their sha256 hex digests as `sha256:<hex>`; "
                                          "set: every /v1 call needs one (`Authorization: Bearer <key>`)")
    rate_limit_per_second: float = Field(0, ge=0, description="requests per second per API key (per client "
                                                              "address without keys); 0: no rate limit")
    rate_limit_burst: int = Field(0, ge=0, description="requests a client may make at once; 0: 2 s worth of the rate")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                         description="comma-separated origins allowed by CORS")
    # -- limits on what one request may cost (docs/security.md); engine limits unset keep the engine's defaults
    max_expr_chars: int = Field(100_000, gt=0, description="characters of an expr or program text")
    max_expr_depth: int = Field(400, gt=0, description="nesting depth of an expr or program (syntax tree levels)")
    max_batch: int = Field(100_000, gt=0, description="points in one batched evaluation")
    max_functions: int = Field(4096, gt=0, description="compiled functions kept in memory (LRU)")
    max_function_bytes: int = Field(512 * MiB, gt=0, description="estimated memory of the compiled functions kept")
    max_nodes: int | None = Field(None, gt=0, description="operations in one function, loop bodies included")
    max_elements: int | None = Field(None, gt=0, description="elements of any one tensor (inputs, literals, values)")
    max_trip_count: int | None = Field(None, gt=0, description="iterations of one loop")
    max_steps: int | None = Field(None, gt=0, description="operation executions per evaluation at one point")
    max_work: float | None = Field(None, gt=0, description="element operations per evaluation at one point")
    max_request_work: float | None = Field(None, gt=0, description="element operations per request")
    max_sweep_rows: int | None = Field(None, gt=0, description="derivative sweeps of one jacobian/hessian request")
    max_while_iterations: int | None = Field(None, gt=0, description="iterations of one while loop (default "
                                             "100000); past it the evaluation stops with 422 while_limit")
    max_request_steps: int | None = Field(None, gt=0, description="operation executions of one request's plans "
                                          "(value and derivatives as run, loops multiplying their bodies)")
    max_request_bytes: int | None = Field(None, gt=0, description="estimated peak memory of one evaluation "
                                          "request (plans' values, reverse-mode tapes, batch copies, results and "
                                          "the answer; default 512 MiB); over it: 413 request_too_large")
    max_optimizers: int = Field(default_factory=default_max_optimizers, gt=0,
                                description="Minimize runs (REST and gRPC) in flight at once in this process; "
                                            "over it: 429 / RESOURCE_EXHAUSTED. Default: 2 per core")
    compile_timeout_seconds: float = Field(300, gt=0, description="a numba compile longer than this is abandoned "
                                                                  "(the plan stays on the interpreter)")
    llvm_kernels: bool = Field(True, description="compile plans with the direct-LLVM back end (seconds where "
                               "numba takes minutes; contractions call the BLAS numba calls); plans of more than 200 "
                               "inputs and outputs, and all plans when false: numba")
    compile_memory_bytes: int = Field(1 << 30, ge=0, description="address space (RLIMIT_AS) of a numba compile "
                                      "worker; one that runs out leaves its plan on a lower tier. 0: no limit")
    isolate_workers: int = Field(default_factory=default_isolate_workers, ge=0,
                                 description="worker processes for evaluations the cost model expects to be long "
                                             "(at least isolate_work); 0 runs every evaluation in the server "
                                             "process. Default: one per usable core less one, at least 1")
    isolate_work: float = Field(1e8, ge=0, description="estimated cost (element operations, an interpreter "
                                "step counting 1,000) from which an evaluation runs in an isolation worker")
    worker_memory_bytes: int = Field(2 << 30, ge=0, description="address space (RLIMIT_AS) of an isolation "
                                     "worker: a request that needs more is answered 413 too_large. 0: no limit")
    isolate_nice: int = Field(5, ge=0, le=19, description="CPU priority (nice) of the isolation workers: when "
                              "cores are short, short requests in the server come first. 0: the server's own")
    malloc_keep_bytes: int = Field(256 * MiB, ge=0, description="freed memory the server process and each "
                                   "isolation worker keep for reuse (glibc's M_TRIM_THRESHOLD; blocks up to 32 MB "
                                   "then come from the heap), so kernels' workspaces and large requests' buffers are "
                                   "not mapped afresh each call. 0: the C library's defaults")
    gc_threshold: int = Field(10_000, ge=0, description="allocations between the collections of Python's "
                              "youngest generation (CPython's default is 700); what start-up made is frozen, so "
                              "a full collection no longer walks it (server/collector.py). 0: Python's defaults")

    @model_validator(mode="after")
    def _tls_pair(self):
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both, or neither")
        return self

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, v):
        return v.lower() if isinstance(v, str) else v

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_keys(cls, v):
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v
