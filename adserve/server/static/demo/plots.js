/**
 * Plots with Plotly (vendored `plotly-cartesian.min.js`, the global `Plotly`):
 * a 1-input function with its tangent line at the point, a 2-input function as
 * contours with the gradient arrow, an optimiser's path drawn as it streams in,
 * and the optimiser's convergence.
 */

import {fmt} from "./format.js";

const Plotly = globalThis.Plotly;
const CONFIG = {displaylogo: false, responsive: true,
                modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d", "toggleSpikelines"]};
const FONT = {family: "Inter, system-ui, -apple-system, Segoe UI, sans-serif", size: 13, color: "#334155"};
const INK = "#0f172a", ACCENT = "#2563eb", RED = "#dc2626", PATH = "#f97316";
const AXIS = {gridcolor: "#e2e8f0", zerolinecolor: "#cbd5e1", linecolor: "#94a3b8", mirror: true, ticks: "outside",
              tickcolor: "#94a3b8"};
const CONTOUR_SCALE = [[0, "#1e3a8a"], [0.2, "#2563eb"], [0.45, "#60a5fa"], [0.7, "#bfdbfe"], [1, "#f8fafc"]];

export const plotly = () => Plotly;

function layout(extra) {
  return {font: FONT, margin: {l: 60, r: 20, t: 20, b: 50}, paper_bgcolor: "#fff", plot_bgcolor: "#fff",
          legend: {orientation: "h", x: 0, y: 1.02, yanchor: "bottom", bgcolor: "rgba(255,255,255,0)"},
          hoverlabel: {font: {family: FONT.family}}, ...extra};
}

function finite(v) {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

/** f on a line, with the tangent y = f(x0) + f'(x0)(x − x0). */
export function plotCurve(el, {name, xs, ys, x0, f0, slope, path = null}) {
  const clean = ys.map(finite);
  const good = clean.filter((v) => v !== null);
  const lo = Math.min(...good, f0), hi = Math.max(...good, f0), pad = 0.08 * (hi - lo || 1);
  const tangentX = [xs[0], xs[xs.length - 1]];
  return Plotly.react(el, [
    {x: xs, y: clean, mode: "lines", name: "f", line: {color: ACCENT, width: 2.5},
     hovertemplate: `${name} = %{x:.4g}<br>f = %{y:.6g}<extra></extra>`},
    {x: tangentX, y: tangentX.map((x) => f0 + slope * (x - x0)), mode: "lines", name: `tangent, slope ${fmt(slope)}`,
     line: {color: RED, width: 2, dash: "dash"}, hoverinfo: "skip"},
    {x: [x0], y: [f0], mode: "markers", name: `(${fmt(x0)}, ${fmt(f0)})`,
     marker: {color: "#fff", size: 11, line: {color: INK, width: 2.5}},
     hovertemplate: `${name} = %{x:.6g}<br>f = %{y:.6g}<extra></extra>`},
    {x: path?.x ?? [], y: path?.y ?? [], text: path?.text ?? [], mode: "lines+markers", name: "optimiser path",
     line: {color: PATH, width: 2}, marker: {size: 6, color: PATH}, visible: Boolean(path?.x.length)},
  ], layout({xaxis: {...AXIS, title: {text: name}, range: [xs[0], xs[xs.length - 1]]},
             yaxis: {...AXIS, title: {text: "f"}, range: [lo - pad, hi + pad]}}), CONFIG);
}

/** Contours of f over a grid, the point, and ∇f drawn as an arrow from it. */
export function plotContours(el, {names, xs, ys, z, point, value, grad, log, path = null}) {
  const zmin = Math.min(...z.flat().map(finite).filter((v) => v !== null));
  const shown = z.map((row) => row.map((v) => {
    const f = finite(v);
    return f === null ? null : (log ? Math.log10(1 + f - zmin) : f);
  }));
  const [wx, wy] = [xs[xs.length - 1] - xs[0], ys[ys.length - 1] - ys[0]];
  const norm = Math.hypot(grad[0] / wx, grad[1] / wy);
  const scale = norm > 0 ? 0.2 / norm : 0;
  const head = [point[0] + grad[0] * scale, point[1] + grad[1] * scale];
  const arrow = {x: head[0], y: head[1], ax: point[0], ay: point[1], xref: "x", yref: "y", axref: "x", ayref: "y",
                 showarrow: true, arrowhead: 2, arrowsize: 1.2, arrowwidth: 2.5, arrowcolor: RED, text: ""};
  const label = {x: head[0], y: head[1], xref: "x", yref: "y", showarrow: false, text: "<b>∇f</b>",
                 font: {color: RED, size: 15}, xshift: 14 * Math.sign(grad[0] || 1), yshift: 10};
  return Plotly.react(el, [
    {type: "contour", x: xs, y: ys, z: shown, colorscale: CONTOUR_SCALE, ncontours: 24, connectgaps: false,
     contours: {coloring: "heatmap", showlines: true}, line: {color: "rgba(15,23,42,0.25)", width: 0.6},
     colorbar: {title: {text: log ? "log₁₀(1+f−min)" : "f", side: log ? "right" : "top"}, thickness: 14,
                outlinewidth: 0},
     hovertemplate: `${names[0]} = %{x:.4g}<br>${names[1]} = %{y:.4g}<br>${log ? "log₁₀(1+f−min)" : "f"} = ` +
                    "%{z:.5g}<extra></extra>", name: "f"},
    {x: [point[0]], y: [point[1]], mode: "markers", name: "point", showlegend: false,
     marker: {color: "#fff", size: 11, line: {color: INK, width: 2.5}},
     hovertemplate: `f(%{x:.6g}, %{y:.6g}) = ${fmt(value)}<br>∇f = (${fmt(grad[0])}, ${fmt(grad[1])})<extra></extra>`},
    {x: path?.x ?? [], y: path?.y ?? [], mode: "lines+markers", name: "optimiser path", showlegend: false,
     line: {color: PATH, width: 2.5}, marker: {size: 6, color: PATH, line: {color: "#fff", width: 1}},
     hovertemplate: "step %{text}<br>(%{x:.6g}, %{y:.6g})<extra></extra>", text: path?.text ?? []},
  ], layout({xaxis: {...AXIS, title: {text: names[0]}, range: [xs[0], xs[xs.length - 1]]},
             yaxis: {...AXIS, title: {text: names[1]}, range: [ys[0], ys[ys.length - 1]]},
             annotations: [arrow, label], margin: {l: 60, r: 10, t: 20, b: 50}}), CONFIG);
}

/** A copy of the optimiser path drawn now ({x, y, text}), or null: a redraw during a run passes it on. */
export function currentPath(el) {
  const i = pathIndex(el);
  if (i === null) return null;
  const t = el.data[i];
  return {x: [...(t.x ?? [])], y: [...(t.y ?? [])], text: [...(t.text ?? [])]};
}

/** Empty the optimiser path (trace 3 of a curve, 2 of contours). */
export function clearPath(el) {
  const i = pathIndex(el);
  if (i !== null) Plotly.restyle(el, {x: [[]], y: [[]], text: [[]], visible: i === 3 ? false : true}, [i]);
}

/** Add iterates to the path: points (x, y) on contours, (x, f(x)) on a curve; `steps` label them. */
export function extendPath(el, xs, ys, steps) {
  const i = pathIndex(el);
  if (i === null || !xs.length) return;
  if (i === 3 && el.data[3].visible === false) Plotly.restyle(el, {visible: true}, [3]);
  Plotly.extendTraces(el, {x: [xs], y: [ys], text: [steps]}, [i]);
}

function pathIndex(el) {
  const data = el.data || [];
  const i = data.findIndex((t) => t.name === "optimiser path");
  return i < 0 ? null : i;
}

/** The optimiser's f and ‖∇f‖ per iteration (‖∇f‖ on a log axis), redrawn whole as iterates arrive. */
export class Convergence {
  constructor(el) {
    this.el = el;
    this.steps = [];
    this.values = [];
    this.norms = [];
  }

  add(iteration, value, gradNorm) {
    this.steps.push(iteration);
    this.values.push(finite(value));
    this.norms.push(gradNorm > 0 ? gradNorm : null);
  }

  draw() {
    const norms = this.norms.filter((v) => v !== null);
    const decades = norms.length ? Math.log10(Math.max(...norms) / Math.min(...norms)) : 0;
    return Plotly.react(this.el, [
      {x: this.steps, y: this.values, mode: "lines+markers", name: "f", line: {color: ACCENT, width: 2},
       marker: {size: 4}},
      {x: this.steps, y: this.norms, mode: "lines+markers", name: "‖∇f‖", yaxis: "y2", line: {color: PATH, width: 2},
       marker: {size: 4}},
    ], layout({height: 220, margin: {l: 60, r: 90, t: 10, b: 40}, datarevision: this.steps.length,
               xaxis: {...AXIS, title: {text: "iteration"}, rangemode: "tozero"},
               yaxis: {...AXIS, title: {text: "f"}},
               yaxis2: {...AXIS, mirror: false, title: {text: "‖∇f‖"}, type: "log", overlaying: "y", side: "right",
                        showgrid: false, exponentformat: "power", tickfont: {size: 11},
                        dtick: Math.max(1, Math.ceil(decades / 5))}}), CONFIG);
  }
}

export function purge(el) {
  Plotly.purge(el);
}
