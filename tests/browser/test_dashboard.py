"""The dashboard in a real headless Chromium: log in, upload through a real Celery worker, register a model
against the real test LLM, manage API tokens; every page is screenshotted and served only by the app itself."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PASSWORD, USERNAME, PageLog

pytestmark = [pytest.mark.browser, pytest.mark.integration]

IMPORT_TIMEOUT_MS = 90_000
EXPECTED_DATASETS = 14
EXPECTED_MODELS = 9
API_KEY = "sk-test-secret"


def shot(page: Page, folder: Path, name: str) -> Path:
    """Save a full-page screenshot and check that a real image was written."""
    path = folder / f"{name}.png"
    path.unlink(missing_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.exists(), f"no screenshot at {path}"
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a real PNG ({len(data)} bytes)"
    return path


def log_in(page: Page, live_server, screenshots: Path | None = None) -> None:  # type: ignore[no-untyped-def]
    page.goto("/login/")
    expect(page.locator("h1")).to_have_text("Log in")
    if screenshots is not None:
        shot(page, screenshots, "login")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.click("form.card button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    expect(page.locator("header .account")).to_contain_text(USERNAME)
    expect(page.locator("header .account")).to_contain_text("Log out")


def upload(page: Page, file: Path | dict, screenshots: Path | None = None, name: str = "") -> None:
    """Submit a file through the upload page and wait until the import has finished, one way or the other."""
    page.goto("/datasets/upload/")
    expect(page.locator("h1")).to_have_text("Upload a dataset")
    expect(page.locator("#upload-progress")).to_be_hidden()
    if screenshots is not None:
        shot(page, screenshots, name)
    page.set_input_files("#upload-form input[type=file]", file if isinstance(file, dict) else str(file))
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#upload-progress")).to_be_visible()
    expect(page.locator("#progress-bar")).to_be_attached()
    # the text ends in "Imported: …" or "Nothing was imported: …", and the link to the import appears
    expect(page.get_by_test_id("progress-text")).to_have_text(re.compile(r"^(Imported|Nothing was imported)"),
                                                              timeout=IMPORT_TIMEOUT_MS)
    expect(page.locator("#progress-done")).to_be_visible()


# 1. Log in, upload the sample records through the page, and find them everywhere -----------------------------

def test_log_in_upload_records_and_browse_them(
        page: Page, page_log: PageLog, live_server, user, sample_records, celery_worker_process, screenshots,
) -> None:  # type: ignore[no-untyped-def]
    from evaluation.models import Dataset, DatasetImport, Query

    assert len(sample_records.read_text().splitlines()) == 384

    log_in(page, live_server, screenshots)
    page.goto("/")
    expect(page.get_by_test_id("count-datasets")).to_have_text("0")

    upload(page, sample_records, screenshots, "upload-before")
    text = page.get_by_test_id("progress-text")
    expect(text).to_have_text(re.compile(r"^Imported"))
    expect(page.locator("#progress-bar")).to_have_attribute("style", re.compile(r"width:\s*100%"))
    expect(page.locator("#progress-errors li")).to_have_count(0)
    expect(page.locator("#progress-link")).to_have_text("See the import")
    shot(page, screenshots, "upload-after")

    # the real worker did the import, in the test database
    job = DatasetImport.objects.get()
    assert job.status == "done", job.message
    assert job.filename == sample_records.name and job.processed_lines == job.total_lines
    assert job.created_by_id == user.pk
    assert Dataset.objects.count() == EXPECTED_DATASETS and Query.objects.count() == 384
    assert celery_worker_process.poll() is None

    # the import page, reached through the link the upload page offers
    page.click("#progress-link")
    page.wait_for_url(re.compile(rf"/imports/{job.pk}/$"))
    expect(page.locator("#import-state")).to_have_text("done")
    expect(page.locator("#import-status table tbody tr")).to_have_count(EXPECTED_DATASETS)
    expect(page.locator("#import-status")).to_contain_text("gsm8k")
    shot(page, screenshots, "import")

    # the datasets list
    page.goto("/datasets/")
    rows = page.locator("table.datasets tbody tr[data-dataset]")
    expect(rows).to_have_count(EXPECTED_DATASETS)
    gsm8k = page.locator('tr[data-dataset="gsm8k"]')
    expect(gsm8k.locator('td[data-col="queries"]')).to_have_text("30")
    expect(gsm8k.locator('td[data-col="train"]')).to_have_text("24")
    expect(gsm8k.locator('td[data-col="test"]')).to_have_text("6")
    expect(page.locator("table").nth(1)).to_contain_text(sample_records.name)  # recent uploads
    shot(page, screenshots, "datasets")

    # the dataset's own page
    gsm8k.locator("a").click()
    page.wait_for_url(re.compile(r"/datasets/\d+/$"))
    expect(page.locator("h1")).to_have_text("gsm8k")
    expect(page.get_by_test_id("dataset-queries")).to_have_text("30")
    expect(page.get_by_test_id("dataset-train")).to_have_text("24")
    expect(page.get_by_test_id("dataset-test")).to_have_text("6")
    model_cols = page.locator("table.queries thead th.model-col")
    expect(model_cols).to_have_count(EXPECTED_MODELS)
    expect(model_cols.first).to_have_text(re.compile(r"\S"))
    expect(page.locator("table.queries tbody tr")).to_have_count(25)  # first page of 30 queries
    first_row_scores = page.locator("table.queries tbody tr").first.locator("td.score")
    expect(first_row_scores).to_have_count(EXPECTED_MODELS)
    numbers = [s for s in first_row_scores.all_inner_texts() if re.fullmatch(r"[01]\.\d\d", s.strip())]
    assert numbers, f"no model scores in the first query row: {first_row_scores.all_inner_texts()}"
    expect(page.locator("nav.pager")).to_contain_text("page 1 of 2 (30 queries)")
    shot(page, screenshots, "dataset-detail")

    # the overview
    page.goto("/")
    expect(page.get_by_test_id("count-datasets")).to_have_text(str(EXPECTED_DATASETS))
    expect(page.get_by_test_id("count-queries")).to_have_text("384")
    shot(page, screenshots, "overview")

    page_log.assert_clean(live_server.url)
    assert any(u.endswith("/static/js/upload.js") for u in page_log.requests)
    assert any(u.endswith("/static/css/app.css") for u in page_log.requests)


# 2. A bad file imports nothing, and the page says which line is wrong ----------------------------------------

BAD_FILES = {
    "csv-without-query-column": (
        {"name": "no_query.csv", "mimeType": "text/csv", "buffer": b"text,gold\nhello,1\nworld,2\n"},
        "line 1", "no query column",
    ),
    "jsonl-score-out-of-range": (
        {"name": "bad_score.jsonl", "mimeType": "application/x-ndjson",
         "buffer": b'{"id": "a", "dataset": "d", "query": "q1", "scores": {"m": 1}}\n'
                   b'{"id": "b", "dataset": "d", "query": "q2", "scores": {"m": 1.5}}\n'},
        "line 2", "1.5 is outside [0, 1]",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_a_bad_upload_imports_nothing_and_names_the_line(
        case: str, page: Page, page_log: PageLog, live_server, user, celery_worker_process,
) -> None:  # type: ignore[no-untyped-def]
    from evaluation.models import Dataset, DatasetImport, LanguageModel, Query

    file, line, problem = BAD_FILES[case]
    log_in(page, live_server)
    upload(page, file)

    text = page.get_by_test_id("progress-text")
    expect(text).to_have_text(re.compile(r"^Nothing was imported"))
    expect(text).to_contain_text(line)
    expect(text).to_contain_text(problem)
    expect(page.locator("#progress-errors li").first).to_contain_text(line)
    expect(page.locator("#progress-link")).to_have_text("See the problems")

    job = DatasetImport.objects.get()
    assert job.status == "failed" and job.errors and f"line {job.errors[0]['line']}" == line
    assert Dataset.objects.count() == 0 and Query.objects.count() == 0 and LanguageModel.objects.count() == 0

    page.click("#progress-link")
    page.wait_for_url(re.compile(rf"/imports/{job.pk}/$"))
    expect(page.locator("#import-state")).to_have_text("failed")
    expect(page.locator("#progress-errors li").first).to_contain_text(line)
    page.goto("/datasets/")
    expect(page.locator("table.datasets tbody tr[data-dataset]")).to_have_count(0)
    expect(page.locator("table.datasets")).to_contain_text("No datasets yet.")
    page_log.assert_clean(live_server.url)


# 3. Register a model against the real LLM server, test it, edit it, deactivate it ------------------------------

def test_register_test_edit_and_deactivate_a_model(
        page: Page, page_log: PageLog, live_server, user, llm, screenshots,
) -> None:  # type: ignore[no-untyped-def]
    from evaluation.models import LanguageModel

    name = "smollm2-local"
    log_in(page, live_server)
    page.goto("/models/")
    page.click("text=Register a model")
    page.wait_for_url(f"{live_server.url}/models/new/")
    expect(page.locator("h1")).to_have_text("Register a model")
    page.fill("#id_name", name)
    page.fill("#id_base_url", llm.base_url)
    page.fill("#id_served_model_id", llm.model)
    page.fill("#id_api_key", API_KEY)
    expect(page.locator("#id_api_key")).to_have_attribute("type", "password")
    page.fill("#id_default_params", '{"temperature": 0.2, "max_tokens": 64}')
    page.fill("#id_max_concurrency", "4")
    page.fill("#id_cost_input_per_mtok", "0.05")
    page.fill("#id_cost_output_per_mtok", "0.10")
    page.fill("#id_description", "SmolLM2-135M behind llama.cpp, for the browser tests")
    shot(page, screenshots, "model-form")
    page.click("form.form button[type=submit]")

    page.wait_for_url(re.compile(r"/models/\d+/$"))
    model = LanguageModel.objects.get(name=name)
    assert page.url == f"{live_server.url}/models/{model.pk}/"
    assert model.api_key == API_KEY and model.served_model_id == llm.model
    assert model.default_params == {"temperature": 0.2, "max_tokens": 64} and model.max_concurrency == 4
    expect(page.locator("ul.messages")).to_contain_text(f"Registered {name}.")
    expect(page.locator("h1")).to_have_text(name)
    expect(page.get_by_test_id("last-check")).to_have_text("never")
    expect(page.locator("dl.kv")).to_contain_text("set (hidden)")
    assert API_KEY not in page.content()

    # Test connection: a real GET /v1/models on the real server
    page.get_by_role("button", name="Test connection").click()
    page.wait_for_url(f"{live_server.url}/models/{model.pk}/")
    flash = page.locator("ul.messages li")
    expect(flash).to_have_count(1)
    expect(flash).to_have_class(re.compile(r"\bsuccess\b"))
    expect(flash).to_contain_text("Test connection: OK")
    expect(flash).to_contain_text(llm.model)
    check = page.get_by_test_id("last-check")
    expect(check).to_contain_text("OK")
    expect(check).to_contain_text("smollm2")
    assert API_KEY not in page.content()
    model.refresh_from_db()
    assert model.last_check_ok is True and "smollm2" in model.last_check_message
    shot(page, screenshots, "model-detail")

    # Edit: change only the concurrency; the empty key field keeps the stored key
    page.get_by_role("link", name="Edit").click()
    page.wait_for_url(f"{live_server.url}/models/{model.pk}/edit/")
    expect(page.locator("h1")).to_have_text(f"Edit {name}")
    expect(page.locator("#id_api_key")).to_have_value("")
    expect(page.locator("#id_max_concurrency")).to_have_value("4")
    assert API_KEY not in page.content()
    page.fill("#id_max_concurrency", "2")
    page.click("form.form button[type=submit]")
    page.wait_for_url(f"{live_server.url}/models/{model.pk}/")
    expect(page.locator("ul.messages")).to_contain_text(f"Saved {name}.")
    expect(page.locator("dl.kv")).to_contain_text(re.compile(r"Concurrency limit\s*2"))
    model.refresh_from_db()
    assert model.max_concurrency == 2 and model.api_key == API_KEY and model.is_active

    # Deactivate
    page.get_by_role("button", name="Deactivate").click()
    page.wait_for_url(f"{live_server.url}/models/{model.pk}/")
    expect(page.locator("ul.messages")).to_contain_text(f"{name} is now inactive.")
    expect(page.get_by_role("button", name="Activate")).to_be_visible()
    model.refresh_from_db()
    assert model.is_active is False

    page.goto("/models/")
    row = page.locator(f'tr[data-model="{name}"]')
    expect(row).to_have_count(1)
    expect(row.locator(".badge")).to_have_text("inactive")
    expect(row.locator("td.n").first).to_have_text("2")
    expect(row).to_contain_text(llm.base_url)
    assert API_KEY not in page.content()
    shot(page, screenshots, "models")
    page_log.assert_clean(live_server.url)


@pytest.mark.parametrize("path", ["/models/new/", "/datasets/upload/", "/tokens/"])
def test_anonymous_users_are_sent_to_the_login_page(
        path: str, page: Page, page_log: PageLog, live_server, user,
) -> None:  # type: ignore[no-untyped-def]
    page.goto(path)
    url = urlsplit(page.url)
    assert (f"{url.scheme}://{url.netloc}", url.path) == (live_server.url, "/login/"), page.url
    assert parse_qs(url.query) == {"next": [path]}, page.url
    expect(page.locator("h1")).to_have_text("Log in")
    # logging in from there goes back to the page asked for
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.click("form.card button[type=submit]")
    page.wait_for_url(f"{live_server.url}{path}")
    page_log.assert_clean(live_server.url)


def test_a_wrong_password_is_refused(page: Page, page_log: PageLog, live_server, user) -> None:  # type: ignore[no-untyped-def]
    page.goto("/login/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", "not-the-password")
    page.click("form.card button[type=submit]")
    expect(page.locator(".error[role=alert]")).to_be_visible()
    assert page.url.startswith(f"{live_server.url}/login/")
    expect(page.locator("header .account")).to_contain_text("Log in")
    page_log.assert_clean(live_server.url)


# 4. API tokens: create one on the page, and it works against the API -----------------------------------------

def test_create_an_api_token_and_use_it(
        page: Page, page_log: PageLog, live_server, user, screenshots,
) -> None:  # type: ignore[no-untyped-def]
    log_in(page, live_server)
    page.click("header .account >> text=API tokens")
    page.wait_for_url(f"{live_server.url}/tokens/")
    expect(page.locator("table tbody")).to_contain_text("No tokens yet.")
    page.fill("input[name=name]", "browser-notebook")
    page.get_by_role("button", name="Create token").click()
    key = page.get_by_test_id("new-token").inner_text().strip()
    assert len(key) >= 20, key
    rows = page.locator("table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("browser-notebook")
    expect(rows.first).to_contain_text("never")
    shot(page, screenshots, "tokens")

    # the new token authenticates the REST API; a made-up one does not
    # (a fresh context, so the session cookie of the logged-in page cannot be what lets the call in)
    anonymous = page.context.browser.new_context()
    try:
        url = f"{live_server.url}/api/v1/datasets"
        ok = anonymous.request.get(url, headers={"Authorization": f"Bearer {key}"})
        assert ok.status == 200, ok.text()
        assert "results" in ok.json() or isinstance(ok.json(), list), ok.text()
        bad = anonymous.request.get(url, headers={"Authorization": "Bearer not-a-real-token"})
        assert bad.status in (401, 403), bad.text()
        none = anonymous.request.get(url)
        assert none.status in (401, 403), none.text()
    finally:
        anonymous.close()

    # the key is shown once: reloading the list shows only its prefix
    page.goto("/tokens/")
    expect(page.get_by_test_id("new-token")).to_have_count(0)
    assert key not in page.content()
    page_log.assert_clean(live_server.url)


def test_the_pages_and_the_api_docs_use_only_local_assets(
        page: Page, page_log: PageLog, live_server, user,
) -> None:  # type: ignore[no-untyped-def]
    """The pages (and the API docs, which could easily pull Swagger UI from a CDN) stay on the app."""
    log_in(page, live_server)
    for path in ["/", "/datasets/", "/models/", "/api/docs/"]:
        response = page.goto(path)
        assert response is not None and response.status == 200, f"{path}: {response and response.status}"
    expect(page.locator(".swagger-ui")).to_be_attached(timeout=15_000)
    page_log.assert_clean(live_server.url)
