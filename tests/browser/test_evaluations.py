"""Evaluation runs in a real headless Chromium: start one from the form against a real OpenAI-compatible server
(the fault server, slowed down), executed by a real Celery worker over Redis; follow it live, read the
accuracy, browse and expand its samples, then cancel and resume another run."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PageLog
from tests.browser.test_dashboard import log_in, shot
from tests.support.fault_server import FaultServer, fault_server

pytestmark = [pytest.mark.browser, pytest.mark.integration]

RUN_TIMEOUT_MS = 90_000
N_QUERIES = 16
DELAY_S = 0.5  # per request; 2 models x 16 queries at 2 requests at a time: about 8 s of work


def answer(body: dict) -> str:  # type: ignore[type-arg]
    """Reply like a model that is right on some queries: alpha on even operands, beta on those not divisible by 3."""
    operand = int(re.search(r"What is (\d+) \+", body["messages"][0]["content"]).group(1))  # type: ignore[union-attr]
    right = operand % 2 == 0 if body.get("model") == "alpha" else operand % 3 != 0
    return f"Adding them gives \\boxed{{{2 * operand if right else 2 * operand + 1}}}."


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with fault_server(content=answer, delay_s=DELAY_S) as server:
        yield server


@pytest.fixture
def setup(server: FaultServer, user):  # type: ignore[no-untyped-def]
    """A dataset of 16 sums and two models served by the fault server, made directly in the database."""
    from evaluation.models import Dataset, LanguageModel, Query

    dataset = Dataset.objects.create(name="sums", split_seed=1, description="i + i, for the browser tests")
    for i in range(N_QUERIES):
        Query.objects.create(dataset=dataset, external_id=f"sum-{i:02d}", text=f"What is {i} + {i}?",
                             text_hash=f"h{i}", gold=str(2 * i), task_type="math", split="train", split_source="file")
    Query.objects.create(dataset=dataset, external_id="held-out", text="What is 100 + 100?", text_hash="h100",
                         gold="200", task_type="math", split="test", split_source="file")
    alpha = LanguageModel.objects.create(name="alpha-1b", base_url=server.base_url, served_model_id="alpha",
                                         max_concurrency=2)
    beta = LanguageModel.objects.create(name="beta-1b", base_url=server.base_url, served_model_id="beta",
                                        max_concurrency=2)
    LanguageModel.objects.create(name="offline-records", base_url="")  # never offered by the form
    return dataset, alpha, beta


def accuracy_text(correct: int, graded: int) -> str:
    tenths = (2000 * correct + graded) // (2 * graded)
    return f"{tenths // 10}.{tenths % 10}%"


def test_start_follow_and_browse_an_evaluation(
        page: Page, page_log: PageLog, live_server, setup, server: FaultServer, celery_worker_process,
        screenshots: Path,
) -> None:  # type: ignore[no-untyped-def]
    from evaluation.models import EvaluationRun, ModelResponse
    from evaluation.selectors import run_progress

    dataset, alpha, beta = setup
    log_in(page, live_server)

    # The list is empty; the nav leads to it and it offers a new evaluation
    page.click("header nav >> text=Evaluations")
    page.wait_for_url(f"{live_server.url}/evaluations/")
    expect(page.locator("table.runs tbody")).to_contain_text("No evaluations yet.")
    page.get_by_role("link", name="New evaluation").click()
    page.wait_for_url(f"{live_server.url}/evaluations/new/")
    expect(page.locator("h1")).to_have_text("New evaluation")
    options = page.locator("#id_models option")
    expect(options).to_have_text(["alpha-1b", "beta-1b"])  # not the offline model

    # A bad parameter is refused, with the message on its field, and nothing is started
    page.select_option("#id_dataset", label="sums (16 train / 1 test)")
    page.select_option("#id_models", label=["alpha-1b", "beta-1b"])
    page.fill("#id_temperature", "5")
    page.click("form.run-form button[type=submit]")
    expect(page.get_by_test_id("error-temperature")).to_contain_text("temperature: 5.0 is outside [0.0, 2.0]")
    assert not EvaluationRun.objects.exists()
    shot(page, screenshots, "evaluation-form-error")

    # The real thing: both models, the train split, greedy-ish sampling
    expect(page.locator("#id_models option:checked")).to_have_count(2)  # the selection survived the error
    page.fill("#id_temperature", "0")
    page.fill("#id_max_tokens", "32")
    page.fill("#id_stop", "###")
    expect(page.locator("#id_use_cache")).to_be_checked()
    shot(page, screenshots, "evaluation-form")
    page.click("form.run-form button[type=submit]")

    page.wait_for_url(re.compile(r"/evaluations/\d+/$"))
    run = EvaluationRun.objects.get()
    assert page.url == f"{live_server.url}/evaluations/{run.pk}/"
    assert run.params == {"temperature": 0.0, "max_tokens": 32, "stop": ["###"]} and run.n_queries == N_QUERIES
    expect(page.locator("ul.messages")).to_contain_text(f"Started evaluation {run.pk}.")
    expect(page.get_by_test_id("run-params")).to_have_text('{"max_tokens": 32, "stop": ["###"], "temperature": 0.0}')

    # Live: the bar moves through the middle while the worker answers, then the run ends as done
    bar = page.get_by_test_id("progress-bar")
    text = page.get_by_test_id("progress-text")
    expect(bar).to_have_attribute("style", re.compile(r"width:\s*([1-9]|[1-9]\d)%"), timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_test_id("run-status")).to_have_text("running")
    expect(text).to_contain_text(f"of {2 * N_QUERIES} samples")
    expect(text).to_contain_text(re.compile(r"\d+\.\d/s · ETA \d+ s"))
    expect(page.get_by_role("button", name="Cancel")).to_be_visible()
    shot(page, screenshots, "evaluation-live")
    expect(page.get_by_test_id("run-status")).to_have_text("done", timeout=RUN_TIMEOUT_MS)
    # the script reloads the page once the run ends: what follows is the server's rendering of the final state
    expect(page.locator("#run-progress")).to_have_attribute("data-active", "0")
    expect(text).to_have_text(re.compile(
        rf"^{2 * N_QUERIES} of {2 * N_QUERIES} samples \(100%\) · {2 * N_QUERIES} done · 0 failed · 0 cached · "
        r"0 remaining · \d+\.\d/s · ETA –$"))
    expect(bar).to_have_attribute("style", re.compile(r"width:\s*100%"))
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    expect(page.get_by_role("button", name="Resume")).to_have_count(0)  # nothing failed

    # The accuracy shown per model is what the database says
    run.refresh_from_db()
    assert run.status == "done" and server.requests == 2 * N_QUERIES
    expected = {"alpha-1b": (8, "50.0%"), "beta-1b": (10, "62.5%")}
    for m in run_progress(run).models:
        stored = ModelResponse.objects.filter(run=run, model_id=m.model_id)
        correct = stored.filter(correct=True).count()
        assert (m.graded, m.correct, stored.count()) == (N_QUERIES, correct, N_QUERIES)
        assert (correct, accuracy_text(correct, m.graded)) == expected[m.model_name]
        row = page.locator(f'tr[data-testid="model-row"][data-model="{m.model_name}"]')
        expect(row.locator('[data-col="done"]')).to_have_text(str(N_QUERIES))
        expect(row.locator('[data-col="graded"]')).to_have_text(str(m.graded))
        expect(row.locator('[data-col="correct"]')).to_have_text(str(correct))
        expect(row.locator('[data-col="accuracy"]')).to_have_text(expected[m.model_name][1])
        expect(row.locator('[data-col="tokens"]')).to_have_text(f"{m.prompt_tokens} / {m.completion_tokens}")
    page.locator("details.run-model").first.locator("summary").click()
    expect(page.locator("details.run-model").first.locator("pre.template")).to_contain_text("{query}")
    shot(page, screenshots, "evaluation-done")

    # The list shows it with its accuracies
    page.goto("/evaluations/")
    row = page.locator(f'tr[data-run="{run.pk}"]')
    expect(row.locator('[data-col="status"]')).to_have_text("done")
    expect(row.locator('[data-col="progress"]')).to_have_text("100%")
    expect(row.locator('[data-col="accuracy"]')).to_have_text("alpha-1b 50.0%, beta-1b 62.5%")
    shot(page, screenshots, "evaluations")

    # The samples: filter to beta's wrong answers, expand one and read it
    page.goto(f"/evaluations/{run.pk}/")
    page.get_by_role("link", name="Samples").click()
    page.wait_for_url(f"{live_server.url}/evaluations/{run.pk}/samples/")
    expect(page.get_by_test_id("sample")).to_have_count(25)  # 32 samples, 25 to a page
    expect(page.get_by_test_id("sample-count")).to_have_text("32 samples")
    page.select_option("select[name=model]", "beta-1b")
    page.select_option("select[name=verdict]", "wrong")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"verdict=wrong"))
    wrong = ModelResponse.objects.filter(run=run, model=beta, correct=False).select_related("query")
    expect(page.get_by_test_id("sample")).to_have_count(wrong.count())
    assert wrong.count() == 6
    first = wrong.order_by("query_id").first()
    sample = page.locator(f'[data-testid="sample"][data-sample-id="{first.pk}"]')
    expect(sample).to_be_visible()
    expect(sample.locator('[data-col="verdict"]')).to_contain_text("wrong")
    expect(sample.locator('[data-col="extracted"]')).to_have_text(first.extracted)
    expect(sample.locator('[data-col="gold"]')).to_have_text(first.query.gold)
    expect(sample.locator('[data-col="reason"]')).to_contain_text(first.grade_reason[:60])
    expect(sample.locator('[data-col="prompt"]')).to_be_hidden()
    sample.locator("summary").click()
    expect(sample.locator('[data-col="prompt"]')).to_be_visible()
    expect(sample.locator('[data-col="prompt"]')).to_contain_text(first.query.text)
    expect(sample.locator('[data-col="response"]')).to_have_text(first.text)
    assert "\\boxed{" in first.text and first.extracted != first.query.gold
    expect(sample.locator('[data-col="finish-reason"]')).to_have_text("stop")
    expect(sample.locator('[data-col="cached"]')).to_have_text("no")
    expect(sample.locator('[data-col="latency"]')).to_contain_text(" ms")
    shot(page, screenshots, "evaluation-samples")

    page_log.assert_clean(live_server.url)
    assert any(u.endswith("/static/js/evaluation.js") for u in page_log.requests)
    assert any(f"/api/v1/evaluations/{run.pk}" in u for u in page_log.requests)  # it polled the API


def test_cancel_a_running_evaluation_then_resume_it(
        page: Page, page_log: PageLog, live_server, setup, server: FaultServer, celery_worker_process,
        screenshots: Path,
) -> None:  # type: ignore[no-untyped-def]
    from evaluation.models import EvaluationRun, ModelResponse
    from evaluation.selectors import run_progress

    dataset, alpha, beta = setup
    server.delay_s = 1.0  # one request at a time, a second each: slow enough to cancel part-way
    alpha.max_concurrency = 1
    alpha.save(update_fields=["max_concurrency"])
    log_in(page, live_server)

    # Start from the model's page: its "Evaluate" button preselects it
    page.goto(f"/models/{alpha.pk}/")
    page.get_by_role("link", name="Evaluate").click()
    page.wait_for_url(re.compile(r"/evaluations/new/\?model="))
    expect(page.locator("#id_models option:checked")).to_have_text(["alpha-1b"])
    page.click("form.run-form button[type=submit]")
    page.wait_for_url(re.compile(r"/evaluations/\d+/$"))
    run = EvaluationRun.objects.get()

    expect(page.get_by_test_id("progress-text")).to_contain_text(re.compile(r"^[1-9]\d* of 16 samples"),
                                                                 timeout=RUN_TIMEOUT_MS)
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_url(f"{live_server.url}/evaluations/{run.pk}/")
    expect(page.locator("ul.messages")).to_contain_text(f"Cancelled evaluation {run.pk}")
    expect(page.get_by_test_id("run-status")).to_have_text("cancelled")
    # Resume is offered once the lane has saved the request it had in flight (the page follows it until then)
    expect(page.get_by_role("button", name="Resume")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_test_id("run-settling")).to_have_count(0)
    run.refresh_from_db()
    saved = ModelResponse.objects.filter(model=alpha).count()
    assert run.status == "cancelled" and not run.batches.filter(status="running").exists()
    assert server.requests == saved < 16, (server.requests, saved)  # every answer asked for was kept
    expect(page.get_by_test_id("progress-text")).to_contain_text(f"{saved} of 16 samples")
    shot(page, screenshots, "evaluation-cancelled")

    # Resume asks only for what is missing; the run then finishes
    page.get_by_role("button", name="Resume").click()
    page.wait_for_url(f"{live_server.url}/evaluations/{run.pk}/")
    expect(page.locator("ul.messages")).to_contain_text(f"Resumed evaluation {run.pk}")
    expect(page.get_by_test_id("run-status")).to_have_text("done", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#run-progress")).to_have_attribute("data-active", "0")
    expect(page.get_by_test_id("progress-text")).to_contain_text("16 of 16 samples (100%) · 16 done · 0 failed")
    progress = run_progress(run)
    assert (progress.done, progress.failed) == (16, 0)
    assert ModelResponse.objects.filter(model=alpha).count() == 16
    assert server.requests == 16  # nothing asked twice
    shot(page, screenshots, "evaluation-resumed")
    page_log.assert_clean(live_server.url)
