"""Binding the listening ports, so that a taken port stops the start with one line naming it.

uvicorn binding HTTP itself logs the error and exits with status 3 after
running the app's shutdown; grpc logs a C-core error line and raises a bare
RuntimeError. `bind` raises an `OSError` whose message is the one line the CLI
prints (`adserve: cannot listen for HTTP on 127.0.0.1:8000: the port is taken`).
"""

import errno
import socket


def bind(host: str, port: int, protocol: str) -> socket.socket:
    """A TCP socket bound (not yet listening) to `host:port`, or an OSError of one line naming the port."""
    def failed(e: OSError) -> OSError:
        reason = "the port is taken" if e.errno == errno.EADDRINUSE else e.strerror or str(e)
        return OSError(f"cannot listen for {protocol} on {host}:{port}: {reason}")

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise failed(e) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and grpc do: restarts need no wait
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise failed(e) from None
    return sock
