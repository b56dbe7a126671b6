"""`python -m bench.profiled OUT -- ARGS...`: the adserve server (`adserve.server.cli`) under cProfile.

The profile covers the thread that runs the event loop (uvicorn, the
middlewares, routing, the gRPC handlers' awaits); work handed to worker
threads shows as the waits for it. The stats are written to OUT when the
server stops (SIGTERM), for `python -m pstats OUT`.
"""

import cProfile
import sys

from adserve.server import cli


def main() -> None:
    out, args = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
    profile = cProfile.Profile()
    try:
        profile.runcall(cli.main, args)
    finally:
        profile.dump_stats(out)


if __name__ == "__main__":
    main()
