"""The baseline of `bench/latency.py`: a bare FastAPI app on uvicorn, served as adserve serves its HTTP.

`POST /evaluate` takes the body adserve's `/v1/functions/{id}/evaluate` takes for the
survey function f(x1, x2) = log(x1) + x1*x2 - sin(x2) (`{"inputs": {"x1", "x2"},
"compute": [...]}`), parses it as an everyday FastAPI endpoint does (`await
request.json()`), computes the value and gradient by hand and answers a dict of
the same shape as adserve's. `GET /healthz` answers `{"status": "ok"}`. No
middleware. uvicorn runs with adserve's options (`app.Server.serve`): the
default loop and HTTP implementations (uvloop and httptools when installed),
`log_config=None` and the root logger at the same level on stderr, so uvicorn's
access line is written for every request here too.

    python -m bench.bare_app --port 8100 [--log-level info]
"""

import argparse
import logging
import math

import uvicorn
from fastapi import FastAPI, Request

app = FastAPI()


@app.post("/evaluate")
async def evaluate(request: Request):
    body = await request.json()
    x1, x2 = float(body["inputs"]["x1"]), float(body["inputs"]["x2"])
    return {"value": math.log(x1) + x1 * x2 - math.sin(x2),
            "gradient": {"x1": 1 / x1 + x2, "x2": x1 - math.cos(x2)}, "cached": False}


@app.get("/healthz")
async def healthz():
    return {"status": "ok"}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log-level", default="info")
    p.add_argument("--loop", default="auto", help="uvicorn's --loop: auto (uvloop when installed), asyncio, uvloop")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_config=None,
                                  log_level=args.log_level, loop=args.loop)).run()


if __name__ == "__main__":
    main()
