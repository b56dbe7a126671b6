/**
 * adserve JavaScript client: one ES module over `fetch` (browsers, Node 18+, Deno).
 *
 *   import {Client} from "./adserve.js";
 *   const ad = new Client("http://127.0.0.1:8000");
 *   const f = {inputs: [{name: "x1", shape: []}, {name: "x2", shape: []}],
 *              expr: "log(x1) + x1*x2 - sin(x2)"};
 *   const r = await ad.evaluate(f, {inputs: {x1: 2, x2: 5}, compute: ["value", "gradient"]});
 *   for await (const step of ad.minimize(f, {x0: {x1: 1, x2: 1}, method: "lbfgs"})) { ... }
 *
 * Requests and answers are the REST API's JSON, unchanged (see docs/rest.md).
 * Every 4xx/5xx becomes an `AdserveError` carrying the server's code, message and
 * location. A function argument is an id, a name or a definition; definitions are
 * registered once per client and remembered by their JSON text. Any tensor may be
 * `{ref}` of one the server holds (`putTensor`). A call the server refuses for now
 * (429: a rate limit or the optimiser cap; 503: shutting down; or no connection) is
 * made again after its Retry-After plus a jittered exponential backoff (`retries`).
 */

/**
 * What to evaluate: the fields of an evaluation request (and of gRPC's EvaluateRequest).
 * @typedef {Object} Evaluation
 * @property {Object<string, *>} inputs one tensor per input
 * @property {string[]} [compute] what to return (default ["value"]): value, gradient, jvp, vjp, hvp,
 *   jacobian, hessian, trace
 * @property {Object<string, *>} [tangent] for jvp and hvp: one tensor per input
 * @property {*} [cotangent] for vjp: a tensor of the output's shape
 * @property {boolean} [batch] every tensor has one extra leading axis of the same length
 * @property {string[]} [wrt] the inputs to differentiate (default: all); the others are held constant
 * @property {number} [timeout_ms] stop the computation after this many milliseconds (a positive integer):
 *   the answer is then 504 deadline_exceeded; the server's own limit applies in any case
 */

export class AdserveError extends Error {
  /**
   * @param {number} status HTTP status (0 when the server could not be reached)
   * @param {number | null} retryAfter seconds the server asked to wait before calling again (429, 503)
   */
  constructor(status, code, message, location = null, retryAfter = null) {
    super(message);
    this.name = "AdserveError";
    this.status = status;
    this.code = code;
    this.location = location;
    this.retryAfter = retryAfter;
  }
}

const RETRY_STATUS = new Set([429, 503]);

export class Client {
  /**
   * @param {string} baseUrl where the server answers, "" for the page's own origin
   * @param {{headers?: Object<string,string>, apiKey?: string, fetch?: typeof fetch, retries?: number,
   *          backoffMs?: number, maxBackoffMs?: number}} options
   *   headers go with every request; apiKey is sent as `Authorization: Bearer`; fetch replaces the global
   *   one; retries (default 2): how many times a refused call is made again, after the server's Retry-After
   *   plus a backoff of backoffMs (100) doubled each time, at most maxBackoffMs (5000), of which a random
   *   half is kept, so that clients refused together do not come back together
   */
  constructor(baseUrl = "", {headers = {}, apiKey, fetch: fetchImpl, retries = 2, backoffMs = 100,
                             maxBackoffMs = 5000} = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.headers = apiKey === undefined ? headers : {Authorization: `Bearer ${apiKey}`, ...headers};
    this._fetch = fetchImpl || globalThis.fetch.bind(globalThis);
    this._ids = new Map();
    this.retries = retries;
    this._backoff = {backoffMs, maxBackoffMs};
  }

  /** Register a definition: `{id, inputs, output_shape, n_nodes}`. */
  async register(definition) {
    const info = await this._json("POST", "/v1/functions", definition);
    this._ids.set(JSON.stringify(definition), info.id);
    return info;
  }

  /**
   * One page of the registered functions, in id order: `{functions: [{id, name?, inputs, output_shape,
   * n_nodes}], next?}`; pass `next` as `after` for the following page.
   * @param {{limit?: number, after?: string}} page
   */
  listFunctions({limit, after} = {}) {
    const query = new URLSearchParams();
    if (limit !== undefined) query.set("limit", String(limit));
    if (after !== undefined) query.set("after", after);
    const text = query.toString();
    return this._json("GET", "/v1/functions" + (text ? `?${text}` : ""));
  }

  /**
   * Hold float64 data (row-major, with `shape`) on the server, sent as raw bytes:
   * `{ref, shape, dtype, nbytes}`; `{ref}` then stands for it in inputs, tangent and cotangent.
   */
  async putTensor(data, shape) {
    const array = data instanceof Float64Array ? data : Float64Array.from(data);
    const response = await this._request("POST", `/v1/tensors?shape=${shape.join(",")}&dtype=float64`,
                                         new Uint8Array(array.buffer, array.byteOffset, array.byteLength));
    return response.json();
  }

  /** A registered function's metadata (by id or name). */
  info(id) {
    return this._json("GET", `/v1/functions/${encodeURIComponent(id)}`);
  }

  /** The definition in canonical graph form. */
  graph(id) {
    return this._json("GET", `/v1/functions/${encodeURIComponent(id)}/graph`);
  }

  /**
   * Evaluate `fn` (an id or a definition) at `evaluation`; the results object.
   * @param {string | Object} fn
   * @param {Evaluation} evaluation
   */
  evaluate(fn, evaluation) {
    if (typeof fn === "string") {
      return this._json("POST", `/v1/functions/${encodeURIComponent(fn)}/evaluate`, evaluation);
    }
    return this._json("POST", "/v1/evaluate", {...evaluation, function: fn});
  }

  /** The generated source of one transform ("primal", "gradient", "jvp", "vjp", "hvp"), as text. */
  async source(fn, transform = "primal") {
    const id = await this.id(fn);
    const path = `/v1/functions/${encodeURIComponent(id)}/source?transform=${encodeURIComponent(transform)}`;
    const response = await this._request("GET", path);
    return response.text();
  }

  /**
   * Run the server's optimiser on `fn` and yield every iterate as it arrives:
   * `{iteration, x, value, grad_norm, done, message}`; the last has `done: true`.
   * `request` = `{x0, method: "lbfgs" | "newton-cg", max_iter?, gtol?}`.
   * Leaving the loop early (or aborting `signal`) closes the stream, which stops the optimiser.
   */
  async *minimize(fn, request, {signal} = {}) {
    const id = await this.id(fn);
    const response = await this._request("POST", `/v1/functions/${encodeURIComponent(id)}/minimize`, request,
                                          signal);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += value;
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, nl).trim();
          buffer = buffer.slice(nl + 1);
          if (line) yield progress(line, response.status);
        }
      }
      if (buffer.trim()) yield progress(buffer, response.status);
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  /** The id of `fn`: itself when a string, else the id of the definition (registered once). */
  async id(fn) {
    if (typeof fn === "string") return fn;
    return this._ids.get(JSON.stringify(fn)) ?? (await this.register(fn)).id;
  }

  async _json(method, path, body) {
    return (await this._request(method, path, body)).json();
  }

  async _request(method, path, body, signal) {
    const init = {method, headers: {...this.headers}, signal};
    if (body instanceof Uint8Array) {
      init.headers["Content-Type"] = "application/octet-stream";
      init.body = body;
    } else if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    for (let attempt = 0; ; attempt++) {
      let response;
      try {
        response = await this._fetch(this.baseUrl + path, init);
      } catch (e) {
        if (e.name === "AbortError") throw e;
        if (attempt < this.retries) {
          await this._pause(attempt, null, signal);
          continue;
        }
        throw new AdserveError(0, "unreachable", `could not reach the server: ${e.message}`);
      }
      if (response.ok) return response;
      const error = await errorOf(response);
      if (!RETRY_STATUS.has(response.status) || attempt >= this.retries) throw error;
      await this._pause(attempt, error.retryAfter, signal);
    }
  }

  /** Wait before attempt `attempt + 1`: Retry-After, plus the backoff with "equal jitter". */
  async _pause(attempt, retryAfter, signal) {
    const {backoffMs, maxBackoffMs} = this._backoff;
    const backoff = Math.min(maxBackoffMs, backoffMs * 2 ** attempt) * (0.5 + Math.random() / 2);
    await new Promise((resolve) => setTimeout(resolve, (retryAfter ?? 0) * 1000 + backoff));
    signal?.throwIfAborted?.();
  }
}

async function errorOf(response) {
  let err = {};
  try {
    err = (await response.json()).error || {};
  } catch {
    // not the contract's error body (a proxy's page, say): fall back on the status
  }
  const retryAfter = Number.parseFloat(response.headers.get("retry-after") ?? "");
  return new AdserveError(response.status, err.code || `http_${response.status}`,
                          err.message || `${response.status} ${response.statusText}`, err.location || null,
                          Number.isFinite(retryAfter) ? retryAfter : null);
}

function progress(line, status) {
  const msg = JSON.parse(line);
  if (msg.error) throw new AdserveError(status, msg.error.code, msg.error.message, msg.error.location || null);
  return msg;
}

/** The shape of a JSON tensor given as a number or nested lists. */
export function shapeOf(value) {
  if (!Array.isArray(value)) return [];
  return value.length === 0 ? [0] : [value.length, ...shapeOf(value[0])];
}

/** A definition's `inputs` from example values: `{x: [1, 2]}` -> `[{name: "x", shape: [2]}]`. */
export function inputSpecs(values) {
  return Object.entries(values).map(([name, v]) => ({name, shape: isB64(v) ? v.shape : shapeOf(v)}));
}

function isB64(t) {
  return t !== null && typeof t === "object" && !Array.isArray(t) && "b64" in t;
}

/** The base64 tensor form of float64 data (row-major) with `shape`, for large arrays. */
export function toB64(data, shape) {
  const array = data instanceof Float64Array ? data : Float64Array.from(data);
  const bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return {dtype: "float64", shape, b64: btoa(text)};
}

const NON_FINITE = {"NaN": NaN, "Infinity": Infinity, "-Infinity": -Infinity};

/** Any JSON tensor (number, nested lists, base64 form) as `{shape, data: Float64Array}`. */
export function fromTensor(t) {
  if (isB64(t)) {
    const text = atob(t.b64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return {shape: t.shape, data: new Float64Array(bytes.buffer)};
  }
  const shape = shapeOf(t);
  const flat = Array.isArray(t) ? t.flat(Infinity) : [t];
  return {shape, data: Float64Array.from(flat, (v) => (typeof v === "string" ? NON_FINITE[v] ?? NaN : v))};
}
