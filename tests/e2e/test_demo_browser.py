"""The demo page at `GET /` in a real browser: Playwright driving Debian's Chromium.

Playwright cannot download its own browsers here, so it launches
`/usr/bin/chromium`, which `scripts/install-system-deps.sh` installs (`make test`
runs it first). The tests skip only when that binary is absent and the script
could not install it; under CI (CI set) they fail instead (browser_helpers.py). The page talks to the
session's real server (tests/conftest.py).
"""

import re

import pytest
from browser_helpers import TIMEOUT_MS, expect_text


@pytest.fixture
def page(browser, server):
    """The demo page, loaded and showing the survey example's answer; fails on any script error."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    script_errors = []
    pg.on("pageerror", lambda e: script_errors.append(str(e)))
    # a refused request also logs "Failed to load resource"; the tests that cause one expect it
    pg.on("console", lambda m: m.type == "error" and "Failed to load resource" not in m.text
          and script_errors.append(m.text))
    pg.goto(server.url + "/")
    expect_text(pg, "#result-value", "11.652")
    yield pg
    context.close()
    assert not script_errors


def set_editor(pg, text: str):
    """Replace the CodeMirror document, as a paste would (no auto-indent per keystroke)."""
    pg.click("#editor .cm-content")
    pg.keyboard.press("Control+a")
    pg.keyboard.insert_text(text)


def set_input(pg, name: str, field: str, value: str):
    rows = pg.locator("#inputs tbody tr")
    for i in range(rows.count()):
        if rows.nth(i).locator("input.in-name").input_value() == name:
            return rows.nth(i).locator(f"input.in-{field}").fill(value)
    raise AssertionError(f"no input row named {name}")


def test_survey_example_on_load(page):
    """Value 11.652 and gradient (5.5, 1.716) at (2, 5), contours drawn, generated code shown."""
    assert page.locator("#example").input_value() == "survey"
    assert "log(x1) + x1*x2 - sin(x2)" in page.locator("#editor .cm-content").inner_text()
    expect_text(page, "#result-gradient tr[data-name=x1] td", "5.5")
    expect_text(page, "#result-gradient tr[data-name=x2] td", "1.716")
    expect_text(page, "#result-jvp", "5.5")
    page.wait_for_function("document.getElementById('plot').data?.[0]?.type === 'contour'")
    assert page.evaluate("document.getElementById('plot').layout.annotations.length") == 2  # the ∇f arrow, its label
    expect_text(page, "#source .cm-content", "def kernel(")


def test_edit_and_evaluate_round_trip(page):
    set_editor(page, "x1*x2 + exp(x1)")
    set_input(page, "x1", "value", "1")
    set_input(page, "x2", "value", "3")
    page.click("#evaluate")
    expect_text(page, "#result-value", "5.718")  # 3 + e
    expect_text(page, "#result-gradient tr[data-name=x1] td", "5.718")  # x2 + e
    expect_text(page, "#result-gradient tr[data-name=x2] td", "1")
    expect_text(page, "#exchange", '"expr": "x1*x2 + exp(x1)"')  # what was sent, for the curious


def test_errors_appear_where_they_belong(page):
    # the server's line and column, in a program
    page.click(".tabs button[data-mode=program]")
    set_editor(page, "def f(x1, x2):\n    y = x1 * x2\n    z = y + sinh2(x1)\n    return z\n")
    page.click("#evaluate")
    box = page.locator("#editor-error")
    expect_text(page, "#editor-error", "sinh2")
    assert box.get_attribute("data-line") == "3"
    assert box.get_attribute("data-column") == "13"
    page.wait_for_selector("#editor .cm-lintRange-error")
    assert page.locator("#editor .cm-lintRange-error").first.inner_text() == "sinh2"

    # an input value that is not a number: marked on the field, nothing sent
    set_editor(page, "def f(x1, x2):\n    return x1 * x2\n")
    set_input(page, "x1", "value", "two")
    page.click("#evaluate")
    expect_text(page, ".field-error", "not a number")
    assert "invalid" in page.locator("input.in-value").first.get_attribute("class")
    assert page.locator("#editor-error").is_hidden()

    # an evaluation the server refuses: a gradient of a vector output
    page.click(".tabs button[data-mode=expr]")
    set_editor(page, "x1 * x2")
    page.uncheck("#compute input[value=jvp]")
    page.uncheck("#compute input[value=trace]")
    set_input(page, "x1", "value", "[1, 2]")
    page.click("#evaluate")
    expect_text(page, "#results .error-card", "422")
    assert page.locator("#results .error-card .code").inner_text() in {"not_scalar", "invalid_compute"}


def test_trace_tables(page):
    """The survey's Tables 2 and 3 for the example: primal, tangent (ẋ = (1, 0)) and adjoint traces."""
    primal = page.locator("#trace-primal tbody tr")
    assert primal.count() == 7  # x1, x2, v1..v5
    assert [r.split("\t")[0].strip() for r in primal.all_inner_texts()][:3] == ["x1", "x2", "v1"]
    assert "log(x1)" in primal.nth(2).inner_text() and "0.693" in primal.nth(2).inner_text()
    assert "11.652" in page.locator("#trace-primal tr.output").inner_text()
    assert "5.5" in page.locator("#trace-tangent tr[data-name=v5]").inner_text()  # ∂y/∂x1
    adjoint = page.locator("#trace-adjoint tbody tr")
    assert adjoint.first.get_attribute("data-name") == "v5"  # reverse order: the output first
    assert re.search(r"\b1\b", adjoint.first.inner_text())  # seeded with ȳ = 1
    assert "5.5" in page.locator("#trace-adjoint tr[data-name=x1]").inner_text()
    assert "1.716" in page.locator("#trace-adjoint tr[data-name=x2]").inner_text()

    # the logistic map written out to l4: equal sub-expressions are shared, so 10 rows, not hundreds
    page.select_option("#example", "logistic")
    page.wait_for_function("document.querySelectorAll('#trace-primal tbody tr').length === 10")
    page.wait_for_function("document.getElementById('plot').data?.[1]?.name.startsWith('tangent')")


def test_optimiser_path_streams_onto_the_contours(page, server):
    page.select_option("#example", "rosenbrock")
    expect_text(page, "#result-value", "24.2")
    page.wait_for_function("document.getElementById('plot').data?.[0]?.type === 'contour'")
    page.select_option("#method", "newton-cg")
    page.click("#run-opt")
    page.wait_for_selector("#opt-status[data-state=done]")
    path = page.evaluate("document.getElementById('plot').data.find(t => t.name === 'optimiser path')")
    assert len(path["x"]) > 10
    assert path["x"][0] == pytest.approx(-1.2) and path["y"][0] == pytest.approx(1.0)
    assert path["x"][-1] == pytest.approx(1.0, abs=1e-3) and path["y"][-1] == pytest.approx(1.0, abs=1e-3)
    steps = page.evaluate("document.getElementById('convergence').data[0].x.length")
    assert steps == len(path["x"])
