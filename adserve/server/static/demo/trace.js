/**
 * The evaluation trace as the survey draws it (Baydin et al. 2018, Tables 2
 * and 3): the forward primal trace, the forward tangent trace (read top down)
 * and the reverse adjoint trace (read bottom up, so listed from the output back
 * to the inputs). One row per variable, from the `"trace"` rows of an evaluation.
 */

import {h, tensorSpan} from "./format.js";

const DOT = "\u0307";  // combining dot above: the tangent ẋ
const BAR = "\u0304";  // combining macron: the adjoint x̄

function accent(name, mark) {
  return h("span", {className: "var"}, name.slice(0, 1) + mark + name.slice(1));
}

function table(id, title, subtitle, head, rows) {
  return h("div", {className: "trace-block"},
    h("div", {className: "trace-title"}, h("strong", {}, title), h("span", {className: "muted"}, subtitle)),
    h("table", {id, className: "trace"}, h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, c)))),
      h("tbody", {}, rows)));
}

function note(id, title, text) {
  return h("div", {className: "trace-block"}, h("div", {className: "trace-title"}, h("strong", {}, title)),
           h("p", {id, className: "muted trace-missing"}, text));
}

/**
 * Render `rows` into `parent`. `direction` is the tangent as {name: text}, for the header;
 * `inputs` the input names (their rows say "input" rather than repeating the name).
 */
export function renderTrace(parent, rows, {direction = null, inputs = []} = {}) {
  const isInput = (r) => inputs.includes(r.name) && r.expr === r.name;
  const mark = (r) => (r.output ? h("span", {className: "badge"}, "= y") : "");
  const primal = rows.map((r) => h("tr", {dataset: {name: r.name}, className: r.output ? "output" : ""},
    h("td", {}, h("span", {className: "var"}, r.name), mark(r)),
    h("td", {className: "expr"}, isInput(r) ? h("span", {className: "muted"}, "input") : r.expr),
    h("td", {}, tensorSpan(r.value))));
  const blocks = [table("trace-primal", "Forward primal trace", "↓ evaluated top down",
                        ["variable", "definition", "value"], primal)];

  if (rows.length && "tangent" in rows[0]) {
    const seed = direction ? Object.entries(direction).map(([n, t]) => `${n.slice(0, 1)}${DOT}${n.slice(1)} = ${t}`)
                                                 .join(", ") : "";
    const tangent = rows.map((r) => h("tr", {dataset: {name: r.name}, className: r.output ? "output" : ""},
      h("td", {}, accent(r.name, DOT)), h("td", {}, tensorSpan(r.tangent))));
    blocks.push(table("trace-tangent", "Forward tangent trace", `↓ seeded with ${seed}`, ["tangent", "value"],
                      tangent));
  } else {
    blocks.push(note("trace-tangent", "Forward tangent trace",
                     "Give a direction ẋ for every input (and ask for trace) to see the tangents."));
  }

  if (rows.length && "adjoint" in rows[0]) {
    const adjoint = [...rows].reverse().map((r) => h("tr", {dataset: {name: r.name},
                                                             className: r.output ? "output" : ""},
      h("td", {}, accent(r.name, BAR)), h("td", {}, tensorSpan(r.adjoint))));
    blocks.push(table("trace-adjoint", "Reverse adjoint trace", `↑ seeded with y${BAR} = 1, output first`,
                      ["adjoint", "value"], adjoint));
  } else {
    blocks.push(note("trace-adjoint", "Reverse adjoint trace",
                     "The output is not a scalar: adjoints need a cotangent ȳ."));
  }
  parent.replaceChildren(...blocks);
}
