"""The REST client, over httpx: `Client` (blocking) and `AsyncClient` (asyncio), the same calls.

`function` arguments take an id or a name, a `FunctionInfo`, or a definition (a
dict, see `expr` and `program`), which the server registers on the way. A
tensor argument may be a `HeldTensor` (`put_tensor`) or `{"ref": ...}`.
`api_key` goes with every call (`Authorization: Bearer`); a call the server
refuses for now (429, 503, or a refused connection) is made again after a
backoff (`retries`, retry.py).
"""

import asyncio
import json
import time

import httpx

from . import _json
from .errors import DeadlineExceeded, Unavailable
from .retry import Retry, policy, seconds

DEFAULT_URL = "http://127.0.0.1:8000"


def _transport_error(e: httpx.TransportError):
    if isinstance(e, httpx.TimeoutException):
        return DeadlineExceeded(f"no answer in time: {e}", "timeout")
    return Unavailable(f"cannot reach the server: {e}", "unavailable", retryable=isinstance(e, httpx.ConnectError))


def _answer(response: httpx.Response):
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return _json.answer(response.status_code, body, seconds(response.headers.get("retry-after")))


RETRY_STATUS = frozenset({429, 503})  # a rate limit or the optimiser cap; a replica shutting down


def _again(response: httpx.Response | None, attempt: int, retry: Retry) -> float | None:
    """Seconds to wait before calling again (`response` None: the connection was refused), or None: don't."""
    if attempt + 1 >= retry.attempts or (response is not None and response.status_code not in RETRY_STATUS):
        return None
    return retry.delay(attempt, None if response is None else seconds(response.headers.get("retry-after")))


def _options(api_key: str | None, httpx_options: dict) -> dict:
    if api_key is not None:
        httpx_options["headers"] = {"Authorization": f"Bearer {api_key}", **httpx_options.get("headers", {})}
    return httpx_options


class Client:
    """Blocking REST client; use it as a context manager, or `close()` it. `timeout` (seconds) bounds each
    attempt of a call; `retries`: how many times a refused call is made again (or a `Retry`)."""

    def __init__(self, url: str = DEFAULT_URL, timeout: float | None = 60.0, *, api_key: str | None = None,
                 retries: int | Retry = 2, **httpx_options):
        self._http = httpx.Client(base_url=url, timeout=timeout, **_options(api_key, httpx_options))
        self.retry = policy(retries)

    def _post(self, path: str, body: dict) -> httpx.Response:
        return self._send("POST", path, json=body)

    def register(self, definition: dict) -> _json.FunctionInfo:
        response = self._post("/v1/functions", definition)
        return _json.info(_answer(response), response.status_code)

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.ConnectError as e:
                if (wait := _again(None, attempt, self.retry)) is None:
                    raise _transport_error(e) from e
            except httpx.TransportError as e:
                raise _transport_error(e) from e
            else:
                if (wait := _again(response, attempt, self.retry)) is None:
                    return response
            time.sleep(wait)
            attempt += 1

    def info(self, function) -> _json.FunctionInfo:
        """A registered function's metadata, by id or name."""
        return _json.info(_answer(self._send("GET", f"/v1/functions/{_json.function_id(function)}")))

    def list_functions(self, limit: int | None = None, after: str | None = None) -> _json.FunctionPage:
        """One page of the registered functions, in id order; pass `page.next` as `after` for the next."""
        return _json.page(_answer(self._send("GET", "/v1/functions", params=_json.listing(limit, after))))

    def put_tensor(self, array) -> _json.HeldTensor:
        """Hold an array on the server (sent as raw bytes); the answer's `tensor` stands for it."""
        params, data = _json.upload(array)
        return _json.held(_answer(self._send("POST", "/v1/tensors", params=params, content=data,
                                             headers={"Content-Type": "application/octet-stream"})))

    def evaluate(self, function, inputs: dict, compute=("value",), tangent=None, cotangent=None,
                 batch: bool = False, wrt=None, timeout_ms: int | None = None) -> _json.Result:
        return _json.result(_answer(self._post(*_json.evaluation(function, inputs, compute, tangent, cotangent,
                                                                  batch, wrt, timeout_ms))))

    def minimize(self, function, x0: dict, method: str = "lbfgs", max_iter: int | None = None,
                 gtol: float | None = None):
        """Iterate over the optimiser's progress; leaving the loop early stops it on the server.

        `timeout` applies to each read of the stream: an optimisation may run longer, as long as iterates keep
        coming. A run refused at the optimiser cap (429) is started again after a backoff (`retries`)."""
        fid = _json.function_id(function) if _json.definition_of(function) is None else self.register(function).id
        body = _json.minimization(x0, method, max_iter, gtol)
        attempt = 0
        try:
            while True:
                with self._http.stream("POST", f"/v1/functions/{fid}/minimize", json=body) as response:
                    if response.status_code != 200:
                        response.read()
                        if (wait := _again(response, attempt, self.retry)) is None:
                            _answer(response)
                    else:
                        for line in response.iter_lines():
                            if line:
                                yield _json.progress(json.loads(line))
                        return
                time.sleep(wait)
                attempt += 1
        except httpx.TransportError as e:
            raise _transport_error(e) from e

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient:
    """The same calls as `Client`, as coroutines (`minimize` is an async iterator)."""

    def __init__(self, url: str = DEFAULT_URL, timeout: float | None = 60.0, *, api_key: str | None = None,
                 retries: int | Retry = 2, **httpx_options):
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout, **_options(api_key, httpx_options))
        self.retry = policy(retries)

    async def _post(self, path: str, body: dict) -> httpx.Response:
        return await self._send("POST", path, json=body)

    async def register(self, definition: dict) -> _json.FunctionInfo:
        response = await self._post("/v1/functions", definition)
        return _json.info(_answer(response), response.status_code)

    async def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.ConnectError as e:
                if (wait := _again(None, attempt, self.retry)) is None:
                    raise _transport_error(e) from e
            except httpx.TransportError as e:
                raise _transport_error(e) from e
            else:
                if (wait := _again(response, attempt, self.retry)) is None:
                    return response
            await asyncio.sleep(wait)
            attempt += 1

    async def info(self, function) -> _json.FunctionInfo:
        return _json.info(_answer(await self._send("GET", f"/v1/functions/{_json.function_id(function)}")))

    async def list_functions(self, limit: int | None = None, after: str | None = None) -> _json.FunctionPage:
        return _json.page(_answer(await self._send("GET", "/v1/functions", params=_json.listing(limit, after))))

    async def put_tensor(self, array) -> _json.HeldTensor:
        params, data = _json.upload(array)
        return _json.held(_answer(await self._send("POST", "/v1/tensors", params=params, content=data,
                                                   headers={"Content-Type": "application/octet-stream"})))

    async def evaluate(self, function, inputs: dict, compute=("value",), tangent=None, cotangent=None,
                       batch: bool = False, wrt=None, timeout_ms: int | None = None) -> _json.Result:
        return _json.result(_answer(await self._post(*_json.evaluation(function, inputs, compute, tangent,
                                                                        cotangent, batch, wrt, timeout_ms))))

    async def minimize(self, function, x0: dict, method: str = "lbfgs", max_iter: int | None = None,
                       gtol: float | None = None):
        fid = _json.function_id(function) if _json.definition_of(function) is None else \
            (await self.register(function)).id
        body = _json.minimization(x0, method, max_iter, gtol)
        attempt = 0
        try:
            while True:
                async with self._http.stream("POST", f"/v1/functions/{fid}/minimize", json=body) as response:
                    if response.status_code != 200:
                        await response.aread()
                        if (wait := _again(response, attempt, self.retry)) is None:
                            _answer(response)
                    else:
                        async for line in response.aiter_lines():
                            if line:
                                yield _json.progress(json.loads(line))
                        return
                await asyncio.sleep(wait)
                attempt += 1
        except httpx.TransportError as e:
            raise _transport_error(e) from e

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()
