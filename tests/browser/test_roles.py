"""Roles in a real browser (issue 14): visitors are sent to log in, a viewer sees no write button and her token
cannot write, the pages keep to their Content-Security-Policy, and the probes answer as documented."""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PageLog

pytestmark = [pytest.mark.browser, pytest.mark.integration]
WRITE_BUTTONS = {
    "/datasets/": "Upload a dataset", "/models/": "Register a model", "/evaluations/": "New evaluation",
    "/snapshots/": "New snapshot",
}


def log_in_as(page: Page, live_server, username: str, password: str) -> None:  # type: ignore[no-untyped-def]
    page.goto("/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("form.card button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    expect(page.locator("header .account")).to_contain_text(username)


@pytest.mark.parametrize("path", ["/", "/datasets/", "/snapshots/", "/traffic/"])
def test_an_anonymous_visitor_is_sent_to_log_in(path: str, page: Page, page_log: PageLog, live_server) -> None:  # type: ignore[no-untyped-def]
    page.goto(path)
    url = urlsplit(page.url)
    assert url.path == "/login/" and parse_qs(url.query) == {"next": [path]}, page.url
    expect(page.locator("h1")).to_have_text("Log in")
    page_log.assert_clean(live_server.url)


def test_a_viewer_sees_no_write_button_and_her_token_cannot_write(
        page: Page, page_log: PageLog, live_server, make_user, user,
) -> None:  # type: ignore[no-untyped-def]
    make_user("vera", "viewer")
    log_in_as(page, live_server, "vera", "vera-password-1")
    for path, button in WRITE_BUTTONS.items():
        page.goto(path)
        expect(page.locator("main h1, h1").first).to_be_visible()
        expect(page.get_by_text(button, exact=True)).to_have_count(0)
    page.goto("/datasets/upload/")
    expect(page.get_by_test_id("error-page")).to_contain_text("Only editors may upload datasets; your role is viewer.")

    page.goto("/tokens/")
    expect(page.get_by_test_id("role")).to_have_text("viewer")
    page.fill("input[name=name]", "notebook")
    page.get_by_role("button", name="Create token").click()
    key = page.get_by_test_id("new-token").inner_text().strip()
    anonymous = page.context.browser.new_context()
    try:
        headers = {"Authorization": f"Bearer {key}"}
        assert anonymous.request.get(f"{live_server.url}/api/v1/datasets", headers=headers).status == 200
        refused = anonymous.request.post(f"{live_server.url}/api/v1/models", headers=headers,
                                         data={"name": "mine", "base_url": "http://127.0.0.1:9/v1"})
        assert refused.status == 403 and "your role is viewer" in refused.json()["error"]["message"]
    finally:
        anonymous.close()
    # the one console error expected: the browser reports the 403 of the upload page
    expected = [e for e in page_log.console_errors if "403" in e and "/datasets/upload/" in e]
    assert len(expected) == 1
    page_log.console_errors.remove(expected[0])
    page_log.assert_clean(live_server.url)


def test_an_admin_sees_the_write_buttons_and_pages_keep_their_csp(
        page: Page, page_log: PageLog, live_server, user,
) -> None:  # type: ignore[no-untyped-def]
    log_in_as(page, live_server, "ada", "lovelace-1815")
    for path, button in WRITE_BUTTONS.items():
        response = page.goto(path)
        assert response is not None and "script-src 'self'" in response.headers["content-security-policy"]
        expect(page.get_by_text(button, exact=True).first).to_be_visible()
    page.goto("/api/docs/")  # Swagger UI starts from a script file, not an inline script
    expect(page.locator(".swagger-ui")).to_be_attached(timeout=15_000)
    expect(page.locator(".swagger-ui .info")).to_be_visible(timeout=15_000)
    page_log.assert_clean(live_server.url)  # a CSP violation is a console error


def test_the_probes_and_metrics_answer_as_documented(page: Page, live_server, make_user) -> None:  # type: ignore[no-untyped-def]
    """No log-in for /healthz and /readyz; /readyz says what is missing; /metrics answers loopback (the default)."""
    from tests.support.snapshots import build_snapshot

    health = page.goto("/healthz")
    assert health is not None and health.status == 200 and health.json() == {"status": "ok"}
    missing = page.goto("/readyz")  # no snapshot is active: not ready, and the reason says so
    assert missing is not None and missing.status == 503
    body = missing.json()
    assert body["status"] == "unavailable" and any(r.startswith("snapshot: ") for r in body["reasons"]), body
    assert body["checks"]["database"]["ok"] is True
    snapshot = build_snapshot(version=1, means={"alpha": [0.9, 0.2], "beta": [0.3, 0.8]},
                              assignments=[("gsm8k", 0), ("mmlu", 1)], team_size=2)
    snapshot.is_active = True
    snapshot.save(update_fields=["is_active"])
    ready = page.request.get(f"{live_server.url}/readyz")  # the broker may be down here; the snapshot is not
    assert ready.json()["checks"]["snapshot"] == {"ok": True, "id": snapshot.pk, "version": 1,
                                                  "router": ready.json()["checks"]["snapshot"]["router"]}
    metrics = page.request.get(f"{live_server.url}/metrics")
    assert metrics.status == 200 and "avengers_routing_stage_seconds" in metrics.text()
    proxied = page.request.get(f"{live_server.url}/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert proxied.status in (401, 403)
