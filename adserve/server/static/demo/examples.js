/**
 * The Examples menu: each entry fills the editor, the inputs, what to compute
 * and the plot's window. `note` is shown under the menu, for the lecture.
 */

export const EXAMPLES = [
  {
    id: "survey",
    title: "Survey example: ln(x1) + x1·x2 − sin(x2)",
    note: "The running example of Baydin et al. (2018), Tables 2 and 3: forward mode with ẋ1 = 1, ẋ2 = 0 " +
          "gives ∂y/∂x1 in one sweep; one reverse sweep gives the whole gradient.",
    mode: "expr",
    source: "log(x1) + x1*x2 - sin(x2)",
    inputs: [{name: "x1", value: "2", direction: "1"}, {name: "x2", value: "5", direction: "0"}],
    compute: ["value", "gradient", "jvp", "trace"],
    plot: {x: [0.25, 4], y: [1, 9]},
  },
  {
    id: "logistic",
    title: "Logistic map l₄ (Table 1: expression swell)",
    note: "l₁ = x, lₙ₊₁ = 4lₙ(1 − lₙ), written out to l₄. Its symbolic derivative swells (Table 1); " +
          "AD shares each repeated sub-expression, so the trace has one row per distinct step.",
    mode: "expr",
    source: "4*(4*(4*x*(1-x))*(1-4*x*(1-x)))*(1-4*(4*x*(1-x))*(1-4*x*(1-x)))",
    inputs: [{name: "x", value: "0.3", direction: "1"}],
    compute: ["value", "gradient", "trace"],
    plot: {x: [0, 1]},
  },
  {
    id: "rosenbrock",
    title: "Rosenbrock function",
    note: "(1 − x)² + 100(y − x²)²: a curved valley with its minimum at (1, 1). " +
          "Run L-BFGS or Newton-CG (which uses Hessian-vector products) from (−1.2, 1).",
    mode: "expr",
    source: "(1 - x)**2 + 100*(y - x**2)**2",
    inputs: [{name: "x", value: "-1.2", direction: "1"}, {name: "y", value: "1", direction: "0"}],
    compute: ["value", "gradient", "hvp", "hessian"],
    plot: {x: [-2, 2], y: [-1, 3], log: true},
  },
  {
    id: "helmholtz",
    title: "Helmholtz free energy (n = 3)",
    note: "The benchmark of Griewank and Walther cited by the survey, with RT = 1: " +
          "a scalar of a vector x, a matrix A and a vector b. One reverse sweep gives all 15 partials.",
    mode: "expr",
    source: "(sum(x * log(x / (1 - dot(b, x))))\n" +
            " - dot(x, A @ x) / (sqrt(8) * dot(b, x))\n" +
            "   * log((1 + (1 + sqrt(2)) * dot(b, x)) / (1 + (1 - sqrt(2)) * dot(b, x))))",
    inputs: [
      {name: "x", value: "[0.1, 0.2, 0.3]", direction: "[1, 0, 0]"},
      {name: "A", value: "[[1, 0.5, 0.25], [0.5, 1, 0.5], [0.25, 0.5, 1]]",
       direction: "[[0, 0, 0], [0, 0, 0], [0, 0, 0]]"},
      {name: "b", value: "[0.2, 0.2, 0.2]", direction: "[0, 0, 0]"},
    ],
    compute: ["value", "gradient", "trace"],
  },
  {
    id: "loop",
    title: "Program with a loop: Babylonian square root",
    note: "Six steps of x ← (x + a/x)/2 converge to √a; differentiating through the loop " +
          "gives d√a/da = 1/(2√a) (0.3536 at a = 2). The loop stays one structured node.",
    mode: "program",
    source: "def f(a):\n    x = a\n    for i in range(6):\n        x = 0.5 * (x + a / x)\n    return x\n",
    inputs: [{name: "a", value: "2", direction: "1"}],
    compute: ["value", "gradient", "hessian", "trace"],
    plot: {x: [0.25, 4]},
  },
];
