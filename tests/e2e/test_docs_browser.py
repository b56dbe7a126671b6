"""`/docs` (Swagger UI) and `/redoc` in a real browser with every other host unreachable: they render the API's
operations from the package's own copies of their scripts (scripts/vendor-js.sh), with no CDN."""

import httpx
import pytest

from browser_helpers import TIMEOUT_MS


@pytest.fixture
def offline_page(browser, server):
    """A page that may reach the server only; (page, the other URLs it tried, its script errors)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    elsewhere, errors = [], []

    def only_the_server(route):
        if route.request.url.startswith(server.url + "/"):
            return route.continue_()
        elsewhere.append(route.request.url)
        return route.abort()

    context.route("**/*", only_the_server)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page, elsewhere, errors
    context.close()


def operation_count(server) -> int:
    """How many operations /openapi.json describes (adserve's own API: the peer protocols have theirs)."""
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    return sum(len(operations) for operations in paths.values())


def test_swagger_ui_renders_the_operations_offline(offline_page, server):
    from playwright.sync_api import expect

    page, elsewhere, errors = offline_page
    page.goto(server.url + "/docs")
    expect(page.locator(".opblock-summary-path", has_text="/v1/functions/{function_id}/evaluate").first).to_be_visible()
    assert page.locator(".opblock").count() == operation_count(server) > 10
    assert page.locator(".swagger-ui .info .title").inner_text().startswith("adserve")
    page.wait_for_load_state("networkidle")
    assert not elsewhere and not errors


def test_redoc_renders_the_operations_offline(offline_page, server):
    from playwright.sync_api import expect

    page, elsewhere, errors = offline_page
    page.goto(server.url + "/redoc")
    expect(page.locator("h2", has_text="Evaluate").first).to_be_visible()
    assert page.locator("[data-section-id^='operation/']").count() == operation_count(server) > 10
    expect(page.get_by_text("API docs by Redocly")).to_be_visible()  # its logo came from a CDN: not any more
    page.wait_for_load_state("networkidle")
    assert not elsewhere and not errors
