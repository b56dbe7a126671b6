/**
 * The demo page: define a function, evaluate what is ticked, and show the
 * results, the survey's traces, a plot (with an optimiser's path streamed live)
 * and the generated code. Every request goes through the JS client (../adserve.js).
 */

import {Client} from "../adserve.js";
import {EXAMPLES} from "./examples.js";
import {codeEditor, codeView, getText, markError, setText, showCode} from "./editor.js";
import {fmt, h, tensorSpan} from "./format.js";
import * as plots from "./plots.js";
import {renderTrace} from "./trace.js";

const $ = (id) => document.getElementById(id);
// An API key (when the server wants one): from the URL fragment (`#key=...`, then dropped from the address bar),
// else the one this browser kept (localStorage), else asked for in the error card of a 401.
const KEY_STORE = "adserve-api-key";

function initialKey() {
  const m = /(?:^#|&)key=([^&]*)/.exec(location.hash);
  if (m) {
    const key = decodeURIComponent(m[1]);
    try { localStorage.setItem(KEY_STORE, key); } catch { /* storage off: the key lasts this page */ }
    history.replaceState(null, "", location.pathname + location.search);
    return key;
  }
  try { return localStorage.getItem(KEY_STORE) || ""; } catch { return ""; }
}

function useKey(key) {
  if (key) client.headers.Authorization = `Bearer ${key}`;
  else delete client.headers.Authorization;
  try {
    if (key) localStorage.setItem(KEY_STORE, key); else localStorage.removeItem(KEY_STORE);
  } catch { /* storage off */ }
}

const client = new Client(location.pathname.replace(/\/[^/]*$/, ""));
useKey(initialKey());
const TANGENT_KINDS = ["jvp", "hvp", "trace"];

// fn: the last registered function {id, info, values}; run: the optimiser's AbortController
const state = {mode: "expr", fn: null, run: null, windowFor: null, plotted: null};

const editor = codeEditor($("editor"), {onRun: evaluate, onChange: () => markError(editor, null, null)});
const sourceView = codeView($("source"));

class FieldError extends Error {
  constructor(input, message) {
    super(message);
    this.input = input;
  }
}

// ---- the form ------------------------------------------------------------------------------------------------

function setMode(mode) {
  state.mode = mode;
  for (const b of document.querySelectorAll(".tabs button")) b.setAttribute("aria-selected", b.dataset.mode === mode);
}

/** Switching form carries the text over where it can: `e` <-> `def f(...): return e`. */
function switchMode(mode) {
  if (mode === state.mode) return;
  const text = getText(editor).trim();
  const names = inputRows().map((r) => r.name.value.trim());
  if (mode === "program") {
    setText(editor, `def f(${names.join(", ")}):\n    return ${text.replace(/\s*\n\s*/g, " ")}\n`);
  } else {
    const m = /^def\s+\w+\s*\([^)]*\)\s*:\s*\n\s*return\s+([\s\S]+)$/.exec(text);
    if (m) setText(editor, m[1].trim());
  }
  setMode(mode);
}

function inputRows() {
  return [...$("inputs").tBodies[0].rows].map((tr) => ({
    tr, name: tr.querySelector(".in-name"), value: tr.querySelector(".in-value"), direction: tr.querySelector(".in-dir"),
  }));
}

function addInputRow({name = "", value = "", direction = ""} = {}) {
  const field = (cls, v, label) => h("input", {type: "text", className: cls, value: v, spellcheck: false,
                                                ariaLabel: label});
  const remove = h("button", {type: "button", className: "icon", title: "remove this input", ariaLabel: "remove"}, "×");
  const tr = h("tr", {},
    h("td", {}, field("in-name", name, "input name")),
    h("td", {}, field("in-value", value, `value of ${name || "input"}`)),
    h("td", {}, field("in-dir", direction, `direction of ${name || "input"}`)),
    h("td", {}, remove));
  remove.addEventListener("click", () => tr.remove());
  tr.addEventListener("keydown", (e) => { if (e.key === "Enter") evaluate(); });
  $("inputs").tBodies[0].append(tr);
}

function parseField(el, what, name) {
  const text = el.value.trim();
  try {
    return JSON.parse(text);
  } catch {
    throw new FieldError(el, `the ${what} of ${name} is not a number or a list of numbers: ${text || "(empty)"}`);
  }
}

/** The definition's inputs, their values, and the direction (null unless every input has one). */
function readInputs() {
  const specs = [], values = {}, directions = {};
  let complete = true;
  for (const row of inputRows()) {
    const name = row.name.value.trim();
    if (!/^[A-Za-z_]\w*$/.test(name)) throw new FieldError(row.name, `"${name}" is not a name: use letters, digits, _`);
    const value = parseField(row.value, "value", name);
    specs.push({name, shape: shapeOf(value)});
    values[name] = value;
    if (row.direction.value.trim()) directions[name] = parseField(row.direction, "direction", name);
    else complete = false;
  }
  return {specs, values, directions: complete && specs.length ? directions : null};
}

function shapeOf(v) {
  return Array.isArray(v) ? (v.length ? [v.length, ...shapeOf(v[0])] : [0]) : [];
}

function ticked() {
  return [...document.querySelectorAll("#compute input:checked")].map((c) => c.value);
}

function loadExample(ex) {
  clearOptimiser();
  setMode(ex.mode);
  setText(editor, ex.source);
  $("example-note").textContent = ex.note;
  $("inputs").tBodies[0].replaceChildren();
  ex.inputs.forEach(addInputRow);
  for (const c of document.querySelectorAll("#compute input")) c.checked = ex.compute.includes(c.value);
  state.windowFor = null;
  setWindow(ex.plot || {x: ["", ""], y: ["", ""]});
  $("log-scale").checked = Boolean(ex.plot?.log);
}

// ---- errors --------------------------------------------------------------------------------------------------

function clearErrors() {
  markError(editor, null, null);
  $("editor-error").hidden = true;
  for (const el of document.querySelectorAll(".inputs input.invalid")) {
    el.classList.remove("invalid");
    el.title = "";
  }
  $("inputs").querySelector(".field-error")?.remove();
}

/** Put an error where it belongs: the editor (line/column), an input field, or the results. */
function showError(err) {
  if (err instanceof FieldError) return fieldError(err.input, err.message);
  const loc = err.location || {};
  if (loc.line) {
    markError(editor, loc, err.message);
    const box = $("editor-error");
    box.replaceChildren(h("strong", {}, `line ${loc.line}, column ${loc.column}`), `: ${err.message}`,
                        h("span", {className: "code"}, err.code));
    box.dataset.line = loc.line;
    box.dataset.column = loc.column;
    box.hidden = false;
    return;
  }
  const named = /\b(inputs|tangent)\.([A-Za-z_]\w*)|\b(input|tangent) '([A-Za-z_]\w*)'/.exec(err.message || "");
  if (named) {
    const [kind, name] = named[1] ? [named[1], named[2]] : [named[3] === "input" ? "inputs" : "tangent", named[4]];
    const row = inputRows().find((r) => r.name.value.trim() === name);
    if (row) return fieldError(kind === "tangent" ? row.direction : row.value, err.message);
  }
  $("results").replaceChildren(errorCard(err));
}

function fieldError(input, message) {
  input.classList.add("invalid");
  input.title = message;
  input.focus();
  $("inputs").after(h("p", {className: "field-error", role: "alert"}, message));
}

function errorCard(err) {
  return h("div", {className: "error-card", role: "alert"},
    h("div", {}, h("strong", {}, err.status ? `${err.status} ` : ""), h("span", {className: "code"}, err.code || "error")),
    h("div", {}, err.message),
    err.status === 401 ? keyForm() : null);
}

/** Asked for on a 401: the API key, kept in this browser; then the evaluation runs again. */
function keyForm() {
  const input = h("input", {type: "password", id: "api-key", placeholder: "API key", autocomplete: "off"});
  const form = h("form", {className: "key-form"}, input, h("button", {type: "submit"}, "Use key"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    useKey(input.value.trim());
    evaluate();
  });
  return form;
}

// ---- evaluation ----------------------------------------------------------------------------------------------

async function evaluate() {
  clearErrors();
  const compute = ticked();
  let inputs;
  try {
    inputs = readInputs();
  } catch (e) {
    return showError(e);
  }
  const definition = {inputs: inputs.specs, [state.mode]: getText(editor)};
  const evaluation = {inputs: inputs.values, compute: compute.length ? compute : ["value"]};
  if (inputs.directions && compute.some((k) => TANGENT_KINDS.includes(k))) evaluation.tangent = inputs.directions;
  busy(true);
  const started = performance.now();
  try {
    const info = await client.register(definition);
    state.fn = {id: info.id, info, values: inputs.values, directions: inputs.directions};
    $("function-info").textContent = `id ${info.id.slice(0, 10)}… · ${info.n_nodes} nodes · output shape ` +
                                     `[${info.output_shape.join(", ")}]`;
    $("exchange").textContent = `POST /v1/functions\n${JSON.stringify(definition, null, 1)}\n→ ` +
                                `${JSON.stringify(info)}\n\nPOST /v1/functions/${info.id}/evaluate\n` +
                                `${JSON.stringify(evaluation)}\n`;
    updateSource();
    const result = await client.evaluate(info.id, evaluation);
    const ms = performance.now() - started;
    $("exchange").textContent += `→ ${JSON.stringify(result)}`;
    $("status").textContent = `answered in ${ms.toFixed(0)} ms${result.cached ? ", from the result cache" : ""}`;
    showResults(result, info);
    showTrace(result, info);
    stale(false);
    await updatePlot();
  } catch (e) {
    $("status").textContent = "";
    $("results").replaceChildren(h("p", {className: "muted"}, "No results: see the error above."));
    stale(true);
    showError(e);
  } finally {
    busy(false);
  }
}

/** Dim what still shows an earlier function after a failed evaluation. */
function stale(on) {
  for (const id of ["plot-panel", "trace-panel", "source-panel"]) $(id).classList.toggle("stale", on);
}

function busy(on) {
  $("evaluate").disabled = on;
  document.body.classList.toggle("busy", on);
}

const KIND_LABELS = {value: "value f(x)", gradient: "gradient ∇f", jvp: "JVP J·ẋ", vjp: "VJP ȳᵀJ", hvp: "HVP H·ẋ",
                     jacobian: "Jacobian", hessian: "Hessian"};

function showResults(result, info) {
  const names = info.inputs.map((i) => i.name);
  const blocks = [];
  for (const kind of ["value", "gradient", "jvp", "vjp", "hvp", "jacobian", "hessian"]) {
    if (!(kind in result)) continue;
    const r = result[kind];
    let body;
    if (kind === "hessian" && info.inputs.every((i) => i.shape.length === 0)) {
      body = h("table", {className: "matrix"}, h("tr", {}, h("th", {}), names.map((n) => h("th", {}, n))),
               names.map((a) => h("tr", {}, h("th", {}, a), names.map((b) => h("td", {}, tensorSpan(r[a][b]))))));
    } else if (kind === "hessian") {
      body = h("table", {className: "pairs"}, names.flatMap((a) => names.map((b) =>
        h("tr", {}, h("th", {}, `∂²f/∂${a}∂${b}`), h("td", {}, tensorSpan(r[a][b]))))));
    } else if (r !== null && typeof r === "object" && !Array.isArray(r)) {
      const prefix = {gradient: "∂f/∂", jacobian: "∂f/∂", vjp: "", hvp: ""}[kind];
      body = h("table", {className: "pairs"}, names.filter((n) => n in r).map((n) =>
        h("tr", {dataset: {name: n}}, h("th", {}, prefix + n), h("td", {}, tensorSpan(r[n])))));
    } else {
      body = tensorSpan(r, kind === "value" ? "num big" : "num");
    }
    blocks.push(h("div", {className: "result", id: `result-${kind}`}, h("div", {className: "label"}, KIND_LABELS[kind]),
                  body));
  }
  if (!blocks.length) blocks.push(h("p", {className: "muted"}, "Only the trace was asked for: see below."));
  $("results").replaceChildren(...blocks);
}

function showTrace(result, info) {
  if (!result.trace) {
    $("trace").replaceChildren(h("p", {className: "muted"},
      "Tick ", h("em", {}, "trace"), " under Compute to see the primal, tangent and adjoint traces."));
    return;
  }
  const direction = state.fn.directions &&
    Object.fromEntries(Object.entries(state.fn.directions).map(([n, t]) => [n, JSON.stringify(t)]));
  renderTrace($("trace"), result.trace, {direction: result.trace[0] && "tangent" in result.trace[0] ? direction : null,
                                         inputs: info.inputs.map((i) => i.name)});
}

// ---- generated source ----------------------------------------------------------------------------------------

async function updateSource() {
  if (!state.fn) return;
  const transform = $("source-transform").value;
  $("source-status").textContent = "";
  try {
    showCode(sourceView, await client.source(state.fn.id, transform), "@njit");  // past the preamble, to the kernel
  } catch (e) {
    showCode(sourceView, "");
    $("source-status").textContent = e.status === 404 && e.code === "not_found"
      ? "This server does not serve generated source." : `${e.code}: ${e.message}`;
  }
}

// ---- plots and the optimiser ---------------------------------------------------------------------------------

/** How the function can be drawn: 1 or 2 scalar inputs and a scalar output; null otherwise. */
function plotKind(info) {
  const scalarIn = info.inputs.every((i) => i.shape.length === 0);
  if (info.output_shape.length !== 0 || !scalarIn || info.inputs.length > 2) return null;
  return info.inputs.length;
}

function setWindow({x, y}) {
  [$("x-lo").value, $("x-hi").value] = x;
  if (y) [$("y-lo").value, $("y-hi").value] = y;
}

function autoWindow(point) {
  const around = (v) => { const w = Math.max(1, Math.abs(v)); return [v - w, v + w]; };
  setWindow({x: around(point[0]), y: point.length > 1 ? around(point[1]) : null});
}

function readWindow(dims) {
  const num = (id) => Number($(id).value);
  const x = [num("x-lo"), num("x-hi")], y = [num("y-lo"), num("y-hi")];
  const ok = (r) => r.every(Number.isFinite) && r[0] < r[1];
  return ok(x) && (dims < 2 || ok(y)) ? {x, y} : null;
}

function linspace([lo, hi], n) {
  return Array.from({length: n}, (_, i) => lo + ((hi - lo) * i) / (n - 1));
}

async function updatePlot() {
  const {info, values} = state.fn;
  const dims = plotKind(info);
  const names = info.inputs.map((i) => i.name);
  $("y-range").hidden = dims !== 2;
  $("log-group").hidden = dims !== 2;
  $("window").hidden = !dims;
  $("x-label").textContent = names[0] ?? "x";
  $("y-label").textContent = names[1] ?? "y";
  $("run-opt").disabled = info.output_shape.length !== 0 || Boolean(state.run);
  if (!dims) {
    plots.purge($("plot"));
    $("plot").hidden = true;
    $("plot-caption").textContent = "";
    const why = info.output_shape.length ? "its output is not a scalar" : "it has more than two inputs, or arrays";
    showPlotNote(`Plots need one or two scalar inputs and a scalar output; ${why}.` +
                 (info.output_shape.length ? "" : " The optimiser still runs: its progress shows below."));
    return;
  }
  const point = names.map((n) => values[n]);
  const key = names.join(",");
  if (state.windowFor !== key) {
    // a new set of inputs: keep the window an example just set, else centre one on the point
    if (state.windowFor !== null || !readWindow(dims)) autoWindow(point);
    state.windowFor = key;
  }
  const win = readWindow(dims);
  if (!win) return showPlotNote("Give each plot range as two numbers, the first below the second.");
  $("plot").hidden = false;
  $("plot-note").hidden = true;
  try {
    const at = await client.evaluate(info.id, {inputs: values, compute: ["value", "gradient"]});
    if (dims === 1) {
      const xs = linspace(win.x, 241);
      const grid = await client.evaluate(info.id, {inputs: {[names[0]]: xs}, compute: ["value"], batch: true});
      await plots.plotCurve($("plot"), {name: names[0], xs, ys: grid.value.map(num), x0: point[0], f0: num(at.value),
                                        slope: num(at.gradient[names[0]]), path: runningPath()});
      $("plot-caption").textContent = `f and its tangent line at ${names[0]} = ${fmt(point[0])}`;
    } else {
      const n = 81, xs = linspace(win.x, n), ys = linspace(win.y, n);
      const gx = ys.flatMap(() => xs), gy = ys.flatMap((y) => xs.map(() => y));
      const grid = await client.evaluate(info.id, {inputs: {[names[0]]: gx, [names[1]]: gy}, compute: ["value"],
                                                   batch: true});
      const z = ys.map((_, j) => grid.value.slice(j * n, (j + 1) * n).map(num));
      await plots.plotContours($("plot"), {names, xs, ys, z, point, value: num(at.value),
                                           grad: names.map((nm) => num(at.gradient[nm])), log: $("log-scale").checked,
                                           path: runningPath()});
      $("plot-caption").textContent = `contours of f on ${n}×${n} points (one batched request) and ∇f at the point`;
    }
    state.plotted = dims;
  } catch (e) {
    showPlotNote(`The plot could not be drawn: ${e.message}`);
  }
}

/** The path drawn so far while an optimiser runs: a redraw that lands during a run (a slow contour grid, the log
 * scale switched) keeps it, so the path still starts at x0. */
function runningPath() {
  return state.run ? plots.currentPath($("plot")) : null;
}

/** A number of an answer: non-finite values come as the strings "NaN", "Infinity", "-Infinity". */
function num(v) {
  return typeof v === "string" ? Number(v) : v;
}

function showPlotNote(text) {
  $("plot-note").textContent = text;
  $("plot-note").hidden = false;
}

/** A new example starts without the last one's optimiser run: stopped, its status and convergence plot gone
 * (the contour plot is drawn again, with an empty path). */
function clearOptimiser() {
  state.run?.abort();
  const status = $("opt-status");
  status.replaceChildren();
  delete status.dataset.state;
  plots.purge($("convergence"));
  $("convergence").hidden = true;
}

async function runOptimiser() {
  if (!state.fn || state.run) return;
  const {id, info, values} = state.fn;
  const names = info.inputs.map((i) => i.name);
  const dims = plotKind(info);
  const controller = new AbortController();
  state.run = controller;
  $("run-opt").disabled = true;
  $("stop-opt").disabled = false;
  const status = $("opt-status");
  status.dataset.state = "running";
  status.textContent = "starting…";
  if (dims) plots.clearPath($("plot"));
  $("convergence").hidden = false;
  const convergence = new plots.Convergence($("convergence"));
  await convergence.draw();
  const request = {x0: values, method: $("method").value, max_iter: Number($("max-iter").value) || 200};
  // iterates can arrive faster than Plotly redraws the contours: draw what came, once per frame
  let last = null, pending = [], frame = null;
  const draw = () => {
    frame = null;
    const steps = pending;
    pending = [];
    const xs = steps.map((s) => num(s.x[names[0]]));
    const ys = dims === 2 ? steps.map((s) => num(s.x[names[1]])) : steps.map((s) => num(s.value));
    if (dims) plots.extendPath($("plot"), xs, ys, steps.map((s) => s.iteration));
    for (const s of steps) convergence.add(s.iteration, num(s.value), num(s.grad_norm));
    convergence.draw();
  };
  try {
    for await (const step of client.minimize(id, request, {signal: controller.signal})) {
      last = step;
      pending.push(step);
      frame ??= requestAnimationFrame(draw);
      status.textContent = `iteration ${step.iteration} · f = ${fmt(step.value)} · ‖∇f‖ = ${fmt(step.grad_norm)}`;
      if (step.done) break;
    }
    status.dataset.state = "done";
    if (last) {
      const at = names.map((n) => `${n} = ${fmt(num(last.x[n]))}`).join(", ");
      status.replaceChildren(h("strong", {}, sentence(last.message || "done")),
        ` after ${last.iteration} iterations: f = ${fmt(last.value)} at ${at} (‖∇f‖ = ${fmt(last.grad_norm)})`);
    }
  } catch (e) {
    if (e.name === "AbortError") {
      status.dataset.state = "stopped";
      status.textContent = `stopped at iteration ${last ? last.iteration : 0}`;
    } else {
      status.dataset.state = "error";
      status.replaceChildren(h("span", {className: "code"}, e.code || "error"), " ",
        e.status === 404 && e.code === "not_found" ? "This server does not run optimisers yet (no minimize endpoint)."
                                                   : e.message);
    }
  } finally {
    if (frame !== null) {
      cancelAnimationFrame(frame);
      draw();
    }
    state.run = null;
    $("run-opt").disabled = false;
    $("stop-opt").disabled = true;
  }
}

/** The optimiser's message as a sentence (SciPy's own come in capitals: "CONVERGENCE: ..."). */
function sentence(text) {
  const calm = text === text.toUpperCase() ? text.toLowerCase() : text;
  return calm.charAt(0).toUpperCase() + calm.slice(1);
}

// ---- wiring --------------------------------------------------------------------------------------------------

for (const ex of EXAMPLES) $("example").append(h("option", {value: ex.id}, ex.title));
$("example").addEventListener("change", () => {
  loadExample(EXAMPLES.find((x) => x.id === $("example").value));
  evaluate();
});
for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => switchMode(b.dataset.mode));
$("add-input").addEventListener("click", () => addInputRow());
$("evaluate").addEventListener("click", evaluate);
$("redraw").addEventListener("click", () => state.fn && updatePlot());
$("log-scale").addEventListener("change", () => state.fn && updatePlot());
$("source-transform").addEventListener("change", updateSource);
$("run-opt").addEventListener("click", runOptimiser);
$("stop-opt").addEventListener("click", () => state.run?.abort());

loadExample(EXAMPLES[0]);
evaluate();
