"""Prometheus metrics: one registry per built server, with HTTP requests, gRPC calls and the service's own counts.

Each server gets its own registry (several in one process stay apart). The
protocols' transports count into it: `web.MetricsMiddleware` HTTP requests per
route template (`observe`), `grpc_calls.CallMetrics` gRPC calls per
method (`observe_grpc`, `grpc_messages`), so one `/metrics` shows both. The
service's counts (registry, caches, tiers, optimiser runs) are read from it at
each scrape. The registry also holds prometheus_client's default process,
platform and GC collectors (`process_resident_memory_bytes`, `python_info`...),
as the default registry would. `render(accept)` negotiates the format:
OpenMetrics for a scraper that asks for it, else the Prometheus text format.
"""

from prometheus_client import (CollectorRegistry, Counter, GCCollector, Histogram, PlatformCollector,
                               ProcessCollector, disable_created_metrics)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

# No `*_created` series beside every counter and histogram: a scraper stores each as one more time series
# and Prometheus does not use them. (A process-wide setting of prometheus_client, read at each scrape.)
disable_created_metrics()

from . import optimize

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, service):
        self.registry = CollectorRegistry()
        for default in (ProcessCollector, PlatformCollector, GCCollector):  # what the default registry has
            default(registry=self.registry)
        labels = ("method", "route", "status")
        self._requests = Counter("adserve_http_requests", "HTTP requests answered", labels, registry=self.registry)
        self._latency = Histogram("adserve_http_request_duration_seconds", "HTTP request latency", labels,
                                  buckets=_BUCKETS, registry=self.registry)
        rpc = ("service", "method", "code")
        self._grpc_calls = Counter("adserve_grpc_requests", "gRPC calls ended, by method and status code", rpc,
                                   registry=self.registry)
        self._grpc_latency = Histogram("adserve_grpc_request_duration_seconds", "gRPC call duration (a stream's: "
                                       "from its start to its end)", rpc, buckets=_BUCKETS, registry=self.registry)
        self._grpc_received = Counter("adserve_grpc_messages_received", "gRPC request messages read",
                                      ("service", "method"), registry=self.registry)
        self._grpc_sent = Counter("adserve_grpc_messages_sent", "gRPC response messages written",
                                  ("service", "method"), registry=self.registry)
        self.registry.register(_ServiceCollector(service))
        # label values -> their series (prometheus_client's `labels()` checks and locks on every call); the
        # values are bounded: methods outside _METHODS are OTHER, routes are templates, gRPC methods registered
        # ones (the interceptors see no others)
        self._children: dict = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method if method in _METHODS else "OTHER", route, status)
        children = self._children.get(key)
        if children is None:
            labels = (key[0], route, str(status))
            children = self._children[key] = (self._requests.labels(*labels), self._latency.labels(*labels))
        children[0].inc()
        children[1].observe(seconds)

    def observe_grpc(self, service: str, method: str, code: str, seconds: float) -> None:
        key = ("grpc", service, method, code)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self._grpc_calls.labels(service, method, code),
                                              self._grpc_latency.labels(service, method, code))
        children[0].inc()
        children[1].observe(seconds)

    def grpc_messages(self, service: str, method: str):
        """(received, sent) counters of one method, to `inc()` per message."""
        key = ("grpc messages", service, method)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self._grpc_received.labels(service, method),
                                              self._grpc_sent.labels(service, method))
        return children

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """(the exposition, its content type) in the format the `Accept` header asks for: OpenMetrics
        (`application/openmetrics-text`), else the Prometheus text format."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class _ServiceCollector:
    def __init__(self, service):
        self._service = service
        self._optimizers = getattr(service, "optimizers", None)  # the service's optimiser capacity

    def collect(self):
        s = self._service.stats()
        e = s["engine"]  # Engine.stats(): the backend's counters
        yield GaugeMetricFamily("adserve_functions_registered", "Functions in the registry", value=s["functions"])
        yield CounterMetricFamily("adserve_result_cache_hits", "Evaluations answered from the result cache",
                                  value=s["cache_hits"])
        yield CounterMetricFamily("adserve_result_cache_misses", "Evaluations not in the result cache",
                                  value=s["cache_misses"])
        yield GaugeMetricFamily("adserve_result_cache_entries", "Results held", value=s["cache_entries"])
        yield GaugeMetricFamily("adserve_result_cache_bytes", "Bytes of results held", value=s["cache_bytes"])
        runs = CounterMetricFamily("adserve_plan_runs", "Plans run, by execution tier", labels=["tier"])
        for tier, n in sorted(e["runs"].items()):
            runs.add_metric([tier], n)
        yield runs
        chosen = CounterMetricFamily("adserve_tier_choices", "Plans (per batch size class) whose tier was chosen "
                                     "by timing both once the kernel was ready, by the tier chosen", labels=["tier"])
        for tier, n in sorted(e["chosen"].items()):
            chosen.add_metric([tier], n)
        yield chosen
        yield CounterMetricFamily("adserve_tier_switches", "Tier choices changed later by fresh timings",
                                  value=e["switches"])
        yield CounterMetricFamily("adserve_tier_probes", "Runs on a tier other than the chosen one, to time it again",
                                  value=e["probes"])
        yield CounterMetricFamily("adserve_parallel_kernel_compiles", "Parallel batch variants compiled",
                                  value=e["parallel_compiles"])
        yield CounterMetricFamily("adserve_llvm_kernel_compiles", "Kernels compiled by the direct-LLVM back end (the "
                                  "other compiles: numba)", value=e["llvm_compiles"])
        yield CounterMetricFamily("adserve_kernels_optimised", "Large kernels whose optimised compile replaced the "
                                  "quick kernel that answered first", value=e["optimised"])
        yield CounterMetricFamily("adserve_kernel_optimise_failures", "Large kernels whose optimised compile failed "
                                  "(their quick kernel stays)", value=e["optimise_failures"])
        yield CounterMetricFamily("adserve_parallel_kernel_failures", "Parallel batch variants that failed, timed "
                                  "out or could not load (their plans stay on the serial kernel)",
                                  value=e["parallel_failures"])
        yield GaugeMetricFamily("adserve_parallel_kernels_enabled", "1 when parallel batch kernels may be used (a "
                                "thread-safe threading layer and more than one core)",
                                value=0 if e["parallel_disabled"] else 1)
        yield CounterMetricFamily("adserve_python_kernels", "Plans given a python-tier kernel (their generated code "
                                  "run by CPython until numba's is loaded)", value=e["python_kernels"])
        yield CounterMetricFamily("adserve_python_declined", "Python-tier runs that met a domain error (log of a "
                                  "negative, 1/0) and were answered by the interpreter", value=e["python_declined"])
        yield GaugeMetricFamily("adserve_evaluations_computing", "Evaluations in the engine now (one stopped by its "
                                "deadline, its client or a shutdown counts until its thread has stopped)",
                                value=s.get("computing", 0))
        yield GaugeMetricFamily("adserve_minimize_running", "Server-side optimisers running (Minimize, REST or gRPC)",
                                value=optimize.running())
        if self._optimizers is not None:
            yield GaugeMetricFamily("adserve_minimize_in_flight", "Minimize runs in flight (admitted, not yet over), "
                                    "REST and gRPC", value=self._optimizers.in_flight)
            yield GaugeMetricFamily("adserve_minimize_limit", "Minimize runs allowed in flight at once "
                                    "(ADSERVE_MAX_OPTIMIZERS)", value=self._optimizers.limit)
            yield CounterMetricFamily("adserve_minimize_refused", "Minimize calls refused at the limit (429 / "
                                      "RESOURCE_EXHAUSTED)", value=self._optimizers.refused)
        yield CounterMetricFamily("adserve_kernel_compiles", "numba kernels compiled", value=e["compiles"])
        yield CounterMetricFamily("adserve_kernel_compile_seconds", "Seconds spent compiling numba kernels "
                                  "(in worker processes)", value=e["compile_seconds"])
        yield CounterMetricFamily("adserve_kernel_disk_loads", "Compiled kernels loaded from the disk cache "
                                  "instead of compiled", value=e["disk_loads"])
        yield CounterMetricFamily("adserve_kernel_compile_failures",
                                  "numba kernels that failed or timed out (their plans stay interpreted)",
                                  value=e["compile_failures"] + e["compile_timeouts"])
        reasons = CounterMetricFamily("adserve_compile_failures", "numba compiles that failed, by reason: timeout, "
                                      "killed (the worker died of a signal), memory (it ran out of its memory limit, "
                                      "ADSERVE_COMPILE_MEMORY_BYTES), error, io (the cache directory is not "
                                      "writable), load", labels=["reason"])
        for reason in ("timeout", "killed", "memory", "error", "io", "load"):
            reasons.add_metric([reason], e["compile_failure_reasons"].get(reason, 0))
        yield reasons
        iso = e.get("isolation")
        if iso is not None:
            yield GaugeMetricFamily("adserve_isolation_workers", "Isolation worker processes running (long "
                                    "evaluations run there; at most ADSERVE_ISOLATE_WORKERS)", value=iso["workers"])
            yield CounterMetricFamily("adserve_isolated_evaluations", "Evaluations sent to an isolation worker "
                                      "(however they ended)",
                                      value=iso["evaluations"])
            replaced = CounterMetricFamily("adserve_isolation_workers_replaced", "Isolation workers killed and "
                                           "replaced, by reason: deadline (it had not stopped at its request's "
                                           "deadline), cancelled (its client left, a shutdown), memory (over "
                                           "ADSERVE_WORKER_MEMORY_BYTES), died", labels=["reason"])
            for reason in ("deadline", "cancelled", "memory", "died"):
                replaced.add_metric([reason], iso["replaced"].get(reason, 0))
            yield replaced
        yield CounterMetricFamily("adserve_compile_retries", "numba compiles tried once more after their worker "
                                  "was killed (a second death leaves the plan on the lower tiers)",
                                  value=e["compile_retries"])
        yield CounterMetricFamily("adserve_kernel_load_failures", "Kernels on disk that did not load (corrupt or "
                                  "truncated): set aside and compiled again", value=e["load_failures"])
        heap = self._service.heap
        yield CounterMetricFamily("adserve_gc_keeps", "Collections of what calls left behind, each followed by "
                                  "gc.freeze, run between calls", value=heap.freezes)
        yield CounterMetricFamily("adserve_gc_keep_seconds", "Seconds those collections took", value=heap.seconds)
        shared = s.get("shared")
        if shared is not None:
            yield GaugeMetricFamily("adserve_redis_up", "1 while the shared Redis answers (0: serving from memory)",
                                    value=int(shared["up"]))
            yield CounterMetricFamily("adserve_redis_errors", "Redis calls that failed (each opens the breaker)",
                                      value=shared["errors"])
            yield CounterMetricFamily("adserve_shared_cache_hits", "Results found in Redis after a local miss",
                                      value=shared["hits"])
            yield CounterMetricFamily("adserve_shared_cache_misses", "Results in neither cache", value=shared["misses"])
            yield CounterMetricFamily("adserve_shared_registry_fetches",
                                      "Functions this replica fetched from Redis and compiled", value=shared["fetches"])
