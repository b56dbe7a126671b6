/**
 * Numbers and tensors for people: three decimals as in the survey's tables
 * (trailing zeros dropped), exponents for very large or small magnitudes, and
 * the full float64 value in a tooltip.
 */

const NON_FINITE = {"NaN": "NaN", "Infinity": "∞", "-Infinity": "−∞"};

/** One number, as the survey prints it: 11.652, 5.5, 0.693. */
export function fmt(x) {
  if (typeof x === "string") return NON_FINITE[x] ?? x;
  if (!Number.isFinite(x)) return Number.isNaN(x) ? "NaN" : (x > 0 ? "∞" : "−∞");
  const a = Math.abs(x);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return trim(x.toExponential(3)).replace("e+", "e").replaceAll("-", "−");
  const s = trim(x.toFixed(3));
  return (s === "-0" ? "0" : s).replace("-", "−");
}

function trim(s) {
  return s.replace(/(\.\d*?)0+(?=$|e)/, "$1").replace(/\.(?=$|e)/, "");
}

/** A JSON tensor (number or nested lists) as short text, rows of a matrix on their own lines. */
export function fmtTensor(t, maxItems = 6) {
  if (!Array.isArray(t)) return fmt(t);
  const items = t.length > maxItems ? [...t.slice(0, maxItems - 1).map((v) => fmtTensor(v, maxItems)), "…"]
                                    : t.map((v) => fmtTensor(v, maxItems));
  const nested = Array.isArray(t[0]);
  return nested ? "[" + items.join(",\n ") + "]" : "[" + items.join(", ") + "]";
}

/** The full-precision text of a tensor, for a tooltip. */
export function exact(t) {
  return JSON.stringify(t);
}

/** A `<span>` showing `t` briefly, with its exact value on hover. */
export function tensorSpan(t, className = "num") {
  const span = document.createElement("span");
  span.className = className;
  span.textContent = fmtTensor(t);
  span.title = exact(t);
  return span;
}

/** Element helper: h("td", {className: "x"}, child, "text", ...). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el) el[k] = v;
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}
