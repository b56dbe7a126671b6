"""`adserve`: start the server. Flags override `ADSERVE_*` variables, which override defaults."""

import argparse
import logging
import os
import sys
import threading
import time

from pydantic import ValidationError

from .. import __version__
from .settings import Settings

log = logging.getLogger("adserve")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="adserve", description="Automatic differentiation as a service.")
    p.add_argument("--host", help="address to listen on (ADSERVE_HOST, default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="HTTP port (ADSERVE_HTTP_PORT, default 8000)")
    p.add_argument("--grpc-port", type=int, help="gRPC port, 0 for none (ADSERVE_GRPC_PORT, default 50051)")
    p.add_argument("--log-level", help="critical, error, warning, info or debug (ADSERVE_LOG_LEVEL)")
    p.add_argument("--log-format", help="text or json (ADSERVE_LOG_FORMAT, default text)")
    p.add_argument("--version", action="version", version=f"adserve {__version__}")
    return p.parse_args(argv)


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        sys.exit(f"adserve: bad setting: {problems}")


def main(argv=None) -> None:
    settings = load_settings(parse_args(argv))
    from . import logs
    logs.configure(settings.log_level, settings.log_format)
    from .app import build

    server = build(settings)
    from . import collector
    collector.tune(settings.gc_threshold)  # after start-up: what it made is frozen (collector.py)
    grpc = f"gRPC on {settings.host}:{settings.grpc_port}" if settings.grpc_port else "gRPC off"
    if server.guard.keys:
        log.info("API keys required on /v1 and gRPC (%d configured)", len(settings.api_keys))
    log.info("adserve %s: HTTP on http://%s:%d (docs at /docs), %s; %s", __version__, settings.host,
             settings.http_port, grpc, f"kernels compiled into {settings.cache_dir}" if settings.compile
             else "interpreter only")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    except OSError as e:
        sys.exit(f"adserve: {e}")
    _exit_past_stuck_workers()


def _exit_past_stuck_workers() -> None:
    """Requests still computing after the grace period would hold the interpreter's exit (worker threads
    are not daemons). Their evaluations were stopped (the interpreter stops at its next check), but a compiled
    kernel runs to its end: it is not waited for past a moment."""
    deadline = time.monotonic() + 2  # threads that are just finishing may end on their own
    busy = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    for t in busy:
        t.join(max(0.0, deadline - time.monotonic()))
    busy = [t for t in busy if t.is_alive()]
    if busy:
        log.warning("exiting with %d worker thread(s) still running", len(busy))
        from . import logs
        logs.close_writer()  # os._exit runs no atexit handlers: the queued lines are written now
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()
