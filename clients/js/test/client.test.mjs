// The JS client against a running server: ADSERVE_URL=http://127.0.0.1:8000 node --test clients/js/test/
// (tests/test_js_client.py runs it against the test session's server).
import assert from "node:assert/strict";
import {test} from "node:test";

import {AdserveError, Client, fromTensor, inputSpecs, shapeOf, toB64} from "../adserve.js";

const url = process.env.ADSERVE_URL;
if (!url) throw new Error("set ADSERVE_URL to a running adserve server");
const ad = new Client(url);
const survey = {inputs: inputSpecs({x1: 2, x2: 5}), expr: "log(x1) + x1*x2 - sin(x2)"};
const rosenbrock = {inputs: inputSpecs({x: 0, y: 0}), expr: "(1 - x)**2 + 100*(y - x**2)**2"};

test("register, then evaluate by id and by definition", async () => {
  const info = await ad.register(survey);
  assert.deepEqual(info.output_shape, []);
  assert.equal(await ad.id(survey), info.id);
  const byId = await ad.evaluate(info.id, {inputs: {x1: 2, x2: 5}, compute: ["value", "gradient"]});
  assert.ok(Math.abs(byId.value - 11.652071455223084) < 1e-12);
  assert.equal(byId.gradient.x1, 5.5);
  const byDef = await ad.evaluate(survey, {inputs: {x1: 2, x2: 5}, compute: ["trace"]});
  assert.deepEqual(byDef.trace.map((r) => r.name), ["x1", "x2", "v1", "v2", "v3", "v4", "v5"]);
  assert.equal(byDef.trace.at(-1).adjoint, 1);
});

test("base64 tensors both ways", async () => {
  const r = await ad.evaluate(survey, {inputs: {x1: toB64([2, 1], [2]), x2: toB64([5, 0], [2])},
                                       compute: ["value"], batch: true});
  const v = fromTensor(r.value);
  assert.deepEqual(v.shape, [2]);
  assert.ok(Math.abs(v.data[0] - 11.652071455223084) < 1e-12 && v.data[1] === 0);
  assert.deepEqual(shapeOf([[1, 2, 3], [4, 5, 6]]), [2, 3]);
  assert.ok(Number.isNaN(fromTensor(["NaN", 1]).data[0]));
});

test("errors carry status, code and location", async () => {
  await assert.rejects(ad.register({inputs: inputSpecs({x: 1}), expr: "x +\n foo(x)"}), (e) => {
    assert.ok(e instanceof AdserveError);
    assert.equal(e.status, 422);
    assert.ok(e.location && e.location.line >= 1);
    return true;
  });
  await assert.rejects(ad.info("no-such-id"), {status: 404, code: "function_not_found"});
  await assert.rejects(new Client("http://127.0.0.1:9", {retries: 0}).info("x"), {status: 0, code: "unreachable"});
});

test("generated source as text", async () => {
  assert.match(await ad.source(survey, "gradient"), /def kernel\(/);
  await assert.rejects(ad.source(survey, "hessian"), {status: 422});
});

test("minimize streams every iterate; leaving early or aborting stops it", async (t) => {
  const probe = await fetch(`${url}/v1/functions/0/minimize`, {method: "POST", body: "{}"});
  if (probe.status === 404 && (await probe.json()).error.code === "not_found") {
    t.skip("this server has no minimize endpoint");
    return;
  }
  const steps = [];
  for await (const s of ad.minimize(rosenbrock, {x0: {x: -1.2, y: 1}, method: "lbfgs", max_iter: 500})) steps.push(s);
  assert.equal(steps[0].iteration, 0);
  assert.ok(steps.at(-1).done && Math.abs(steps.at(-1).x.x - 1) < 1e-3);

  let seen = 0;
  for await (const s of ad.minimize(rosenbrock, {x0: {x: -1.2, y: 1}, method: "newton-cg"})) {
    if (++seen === 3 || s.done) break;
  }
  assert.equal(seen, 3);

  const controller = new AbortController();
  await assert.rejects(async () => {
    for await (const s of ad.minimize(rosenbrock, {x0: {x: -1.2, y: 1}}, {signal: controller.signal})) {
      if (s.iteration === 1) controller.abort();
    }
  }, {name: "AbortError"});
});

test("names, listing and held tensors", async () => {
  const named = {...rosenbrock, name: "js.rosenbrock"};
  const info = await ad.register(named);
  assert.equal(info.name, "js.rosenbrock");
  assert.equal((await ad.info("js.rosenbrock")).id, info.id);
  const seen = [];
  let page = await ad.listFunctions({limit: 1});
  for (;;) {
    seen.push(...page.functions);
    if (!page.next) break;
    page = await ad.listFunctions({limit: 1, after: page.next});
  }
  assert.ok(seen.some((f) => f.id === info.id && f.name === "js.rosenbrock"));
  const held = await ad.putTensor([1, 1], [2]);
  assert.deepEqual([held.shape, held.dtype, held.nbytes], [[2], "float64", 16]);
  const r = await ad.evaluate("js.rosenbrock", {inputs: {x: 1, y: 1}, compute: ["value"]});
  assert.equal(r.value, 0);
  const s = await ad.evaluate({inputs: inputSpecs({v: [0, 0]}), expr: "sum(v * v)"},
                              {inputs: {v: {ref: held.ref}}, compute: ["value"]});
  assert.equal(fromTensor(s.value).data[0], 2);
  await assert.rejects(ad.listFunctions({limit: 0}), (e) => e.status === 422 && e.code === "invalid_parameter");
});

test("a 429 is made again after its Retry-After; with retries 0 it is the error", async () => {
  const refused = () => new Response(JSON.stringify({error: {code: "rate_limited", message: "over the rate"}}),
                                     {status: 429, headers: {"Content-Type": "application/json", "Retry-After": "0"}});
  let calls = 0;
  const once = async (input, init) => (++calls === 1 ? refused() : fetch(input, init));
  const r = await new Client(url, {fetch: once}).evaluate(survey, {inputs: {x1: 2, x2: 5}});
  assert.equal(calls, 2);
  assert.ok(Math.abs(r.value - 11.652071455223084) < 1e-12);
  await assert.rejects(new Client(url, {fetch: async () => refused(), retries: 0}).info("x"),
                       {status: 429, code: "rate_limited", retryAfter: 0});
  calls = 0;
  const always = async () => (calls++, refused());
  await assert.rejects(new Client(url, {fetch: always, retries: 2, backoffMs: 1}).info("x"), {status: 429});
  assert.equal(calls, 3);  // the call and two more
});

test("apiKey goes as a bearer token", async () => {
  let sent;
  const spy = async (input, init) => ((sent = init.headers), fetch(input, init));
  await new Client(url, {fetch: spy, apiKey: "k-123"}).info(await ad.id(survey));
  assert.equal(sent.Authorization, "Bearer k-123");
});
