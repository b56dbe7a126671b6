"""The demo page at a phone's width (420 px) and a desktop's (1400 px), and the optimiser panel across
examples, in a real browser (Playwright, Debian's Chromium; see test_demo_browser.py)."""

import pytest

from browser_helpers import TIMEOUT_MS, expect_text


def open_demo(browser, server, width: int):
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    expect_text(page, "#result-value", "11.652")
    page.wait_for_function("document.getElementById('plot').data?.length > 0")
    return context, page, errors


OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const out = [...document.querySelectorAll('body *')].filter((el) => {
    const r = el.getBoundingClientRect();
    // Plotly's off-screen measuring element is placed far left on purpose; the editor's lines and <pre>
    // blocks scroll inside their own boxes (the page itself must not: scrollWidth, above)
    return r.width > 0 && (r.right > width + 0.5 || r.left < -0.5) &&
           !el.closest('#js-plotly-tester, .cm-scroller, pre');
  }).map((el) => el.id || el.getAttribute('class') || el.tagName);
  return {scroll: document.documentElement.scrollWidth, width, out: out.slice(0, 10)};
}"""


@pytest.mark.parametrize("width", [420, 1400])
def test_nothing_runs_off_the_side(browser, server, width):
    context, page, errors = open_demo(browser, server, width)
    try:
        for example in ("survey", "helmholtz", "rosenbrock"):  # the last draws contours
            page.select_option("#example", example)
            page.wait_for_timeout(0)
            page.wait_for_function("!document.body.classList.contains('busy')")
            found = page.evaluate(OVERFLOW)
            assert found["scroll"] <= found["width"] and not found["out"], (example, found)
        select = page.locator("#example").bounding_box()
        assert select["x"] + select["width"] <= width
        page.wait_for_function("document.getElementById('plot').data?.[0]?.type === 'contour'")
        plot = page.locator("#plot").bounding_box()
        assert plot["width"] <= width and plot["width"] > 0.6 * min(width, 700)
        columns = page.evaluate("getComputedStyle(document.querySelector('.layout'))"
                                ".gridTemplateColumns.split(' ').length")
        assert columns == (1 if width < 980 else 2)
        assert not errors
    finally:
        context.close()


def test_switching_examples_clears_the_optimiser_panel(browser, server):
    context, page, errors = open_demo(browser, server, 1400)
    try:
        page.select_option("#example", "rosenbrock")
        expect_text(page, "#result-value", "24.2")
        page.click("#run-opt")
        page.wait_for_selector("#opt-status[data-state=done]")
        assert page.locator("#convergence").is_visible()
        page.select_option("#example", "survey")
        expect_text(page, "#result-value", "11.652")
        assert page.locator("#opt-status").inner_text() == ""
        assert page.locator("#opt-status").get_attribute("data-state") is None
        assert not page.locator("#convergence").is_visible()
        # the survey's plot, drawn after its results, has no path of Rosenbrock's run
        page.wait_for_function("""() => {
          const data = document.getElementById('plot').data || [];
          const path = data.find((t) => t.name === 'optimiser path');
          return data.length > 0 && data[0].type === 'contour' && (!path || path.x.length === 0)
                 && data[0].x[0] !== -2;  // not Rosenbrock's window any more
        }""")
        assert not errors
    finally:
        context.close()
