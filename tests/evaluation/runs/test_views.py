"""The evaluation pages of the dashboard, rendered by Django's test client from runs made with a fake client."""
from __future__ import annotations

import html
import re
from functools import partial
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.urls import reverse

from evaluation.runs import lanes, services
from evaluation.core.generation import GenerationError
from evaluation.models import Dataset, EvaluationRun, LanguageModel, ModelResponse
from evaluation.selectors import run_progress
from tests.support.fakes import FakeLLMClient
from tests.support.math_queries import make_math_dataset, make_unserved_model, operand, right_for_even

pytestmark = pytest.mark.django_db

make_model = partial(make_unserved_model, max_concurrency=2)  # make_model(name="m1", **fields)


def always_right(request, i) -> str:  # type: ignore[no-untyped-def]
    return f"so \\boxed{{{2 * operand(request)}}}"


def fail_on_three(request):  # type: ignore[no-untyped-def]
    return GenerationError("client_error", "HTTP 400: prompt too long") if "3 + 3" in request.messages[0]["content"] else None


def run_lane(run: EvaluationRun, model: LanguageModel, client: FakeLLMClient) -> None:
    lanes.evaluation_lane_run(run_id=run.pk, model_id=model.pk, client_factory=lambda m: client)


def text_of(response) -> str:  # type: ignore[no-untyped-def]
    """The page's text with tags removed and whitespace collapsed, for assertions on what a reader sees."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode())))


def by_testid(response, name: str) -> str:  # type: ignore[no-untyped-def]
    """The text of the first element with data-testid=name."""
    match = re.search(rf'data-testid="{name}"[^>]*>(.*?)</', response.content.decode(), re.S)
    assert match, f"no data-testid={name} on the page"
    return html.unescape(re.sub(r"\s+", " ", match.group(1)).strip())


@pytest.fixture
def logged_in(client: Client, user) -> Client:  # type: ignore[no-untyped-def]
    client.force_login(user)
    return client


@pytest.fixture
def finished_run(user) -> EvaluationRun:  # type: ignore[no-untyped-def]
    """6 queries x 2 samples x 2 models; m1 is right on even operands, m2 fails on "3 + 3" and is otherwise right."""
    dataset = make_math_dataset(6)
    m1, m2 = make_model("m1"), make_model("m2")
    run = services.evaluation_run_create(dataset=dataset, models=[m1, m2], samples=2,
                                       params={"temperature": 0.5, "max_tokens": 32}, user=user, queue=False)
    run_lane(run, m1, FakeLLMClient(reply=right_for_even))
    run_lane(run, m2, FakeLLMClient(reply=always_right, fail=fail_on_three))
    run.refresh_from_db()
    return run


# The list -------------------------------------------------------------------------------------------------------

def test_the_list_shows_each_run_with_its_progress_and_accuracy_per_model(client: Client, finished_run) -> None:  # type: ignore[no-untyped-def]
    progress = run_progress(finished_run)
    assert (progress.total, progress.done, progress.failed) == (24, 22, 2)
    response = client.get(reverse("evaluation-list"))
    assert response.status_code == 200
    row = re.search(rf'<tr data-run="{finished_run.pk}">(.*?)</tr>', response.content.decode(), re.S)
    assert row, "the run has no row"
    cells = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row.group(1)))
    assert "arith" in cells and "train" in cells and "m1, m2" in cells and "done" in cells
    assert "100%" in cells  # 22 done + 2 failed of 24
    assert "m1 50.0%" in cells and "m2 100.0%" in cells  # m2's graded samples: 10, all right
    assert "ada" in cells
    assert "New evaluation" not in response.content.decode()  # anonymous visitors cannot start one


def test_the_list_filters_by_status(logged_in: Client, finished_run) -> None:  # type: ignore[no-untyped-def]
    other = services.evaluation_run_create(dataset=finished_run.dataset, models=[make_model("m3")], queue=False)
    page = logged_in.get(reverse("evaluation-list")).content.decode()
    assert f'data-run="{finished_run.pk}"' in page and f'data-run="{other.pk}"' in page and "New evaluation" in page
    running = logged_in.get(reverse("evaluation-list"), {"status": "running"}).content.decode()
    assert f'data-run="{other.pk}"' in running and f'data-run="{finished_run.pk}"' not in running
    cancelled = logged_in.get(reverse("evaluation-list"), {"status": "cancelled"})
    assert "No evaluations cancelled yet." in text_of(cancelled)
    # an unknown status is ignored rather than an error
    assert f'data-run="{other.pk}"' in logged_in.get(reverse("evaluation-list"), {"status": "nope"}).content.decode()


# The run page ---------------------------------------------------------------------------------------------------

def test_the_run_page_shows_the_configuration_and_the_numbers_from_the_database(client: Client, finished_run) -> None:  # type: ignore[no-untyped-def]
    response = client.get(reverse("evaluation-detail", args=[finished_run.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    assert by_testid(response, "run-status") == "done"
    assert by_testid(response, "progress-text").startswith("24 of 24 samples (100%) · 22 done · 2 failed · 0 cached · "
                                                        "0 remaining · ")
    assert "2 failed: resume to retry them" in by_testid(response, "run-message")
    assert 'style="width:100%"' in page
    assert by_testid(response, "run-params") == '{"max_tokens": 32, "temperature": 0.5}'
    for m in run_progress(finished_run).models:
        row = re.search(rf'<tr data-testid="model-row" data-model-id="{m.model_id}"[^>]*>(.*?)</tr>', page, re.S)
        assert row, f"no row for {m.model_name}"
        cols = dict(re.findall(r'data-col="(\w+)">([^<]*)<', row.group(1)))
        assert cols == {"done": str(m.done), "failed": str(m.failed), "cached": "0", "graded": str(m.graded),
                        "correct": str(m.correct), "accuracy": f"{100 * m.correct / m.graded:.1f}%",
                        "tokens": f"{m.prompt_tokens} / {m.completion_tokens}"}
    # the models' templates are on the page, under <details>
    template = finished_run.run_models.first().templates["math"]
    assert "<details" in page and template.split("{query}")[0].strip()[:20] in page
    # a finished run is not followed: no polling and no meta refresh
    assert 'data-active="0"' in page and 'http-equiv="refresh"' not in page
    # anonymous visitors see no buttons
    assert "Resume" not in text_of(response) and "Cancel" not in text_of(response)


def test_a_running_run_is_followed_through_the_api_or_by_reloading(
        anon_client: Client, client: Client, user, public_read) -> None:  # type: ignore[no-untyped-def]
    run = services.evaluation_run_create(dataset=make_math_dataset(3), models=[make_model()], queue=False)
    url = reverse("evaluation-detail", args=[run.pk])
    anonymous = anon_client.get(url).content.decode()  # a visitor, where AVENGERS_PUBLIC_READ lets one read
    assert 'data-active="1"' in anonymous and 'data-poll="reload"' in anonymous
    assert '<noscript><meta http-equiv="refresh"' in anonymous
    assert reverse("api-evaluation-detail", args=[run.pk]) in anonymous and "js/evaluation.js" in anonymous
    client.force_login(user)
    response = client.get(url)
    assert 'data-poll="api"' in response.content.decode()
    assert by_testid(response, "run-status") == "running"
    assert by_testid(response, "progress-text").startswith("0 of 3 samples (0%) · 0 done · 0 failed · 0 cached · "
                                                        "3 remaining · – · ETA –")
    assert "Cancel" in text_of(response) and "Resume" not in text_of(response)


def test_an_unknown_run_is_404(client: Client) -> None:
    for name in ("evaluation-detail", "evaluation-samples"):
        assert client.get(reverse(name, args=[999999])).status_code == 404


# Starting a run -------------------------------------------------------------------------------------------------

def form_data(dataset: Dataset, *models: LanguageModel, **changes: object) -> dict[str, object]:
    data: dict[str, object] = {"dataset": dataset.pk, "models": [m.pk for m in models], "split": "train",
                               "samples": 1, "temperature": "", "top_p": "", "max_tokens": "", "seed": "", "stop": "",
                               "limit": "", "use_cache": "on"}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_the_form_starts_a_run_and_redirects_to_its_page(logged_in: Client, user) -> None:  # type: ignore[no-untyped-def]
    dataset = make_math_dataset(5)
    m1, m2 = make_model("m1"), make_model("m2")
    response = logged_in.post(reverse("evaluation-create"), form_data(
        dataset, m1, m2, samples=3, temperature="0.7", top_p="0.9", max_tokens="64", seed="11",
        stop="###\n\nEND\n", limit="4", use_cache=None))
    run = EvaluationRun.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("evaluation-detail", args=[run.pk])
    assert run.dataset == dataset and run.samples == 3 and run.limit == 4 and run.n_queries == 4
    assert run.params == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 64, "seed": 11, "stop": ["###", "END"]}
    assert run.use_cache is False and run.created_by == user and run.status == "running"
    assert sorted(run.run_models.values_list("model__name", flat=True)) == ["m1", "m2"]
    page = logged_in.get(response["Location"])
    assert f"Started evaluation {run.pk}." in text_of(page)


def test_empty_parameters_are_left_to_the_models_defaults(logged_in: Client) -> None:
    dataset = make_math_dataset(2)
    model = make_model(default_params={"temperature": 0.1})
    logged_in.post(reverse("evaluation-create"), form_data(dataset, model))
    run = EvaluationRun.objects.get()
    assert run.params == {} and run.use_cache is True and run.limit is None
    assert run.run_models.get().params == {"temperature": 0.1}


def test_the_form_preselects_the_dataset_and_model_from_the_links(logged_in: Client) -> None:
    dataset = make_math_dataset(2, name="other")
    make_math_dataset(2, name="arith")
    model = make_model("m2")
    make_model("m1")
    page = logged_in.get(reverse("evaluation-create"), {"dataset": dataset.pk, "model": model.pk}).content.decode()
    assert re.search(rf'<option value="{dataset.pk}" selected>other', page)
    assert re.search(rf'<option value="{model.pk}" selected>m2', page)
    # the dataset and model pages link to it
    assert f'{reverse("evaluation-create")}?dataset={dataset.pk}' in logged_in.get(
        reverse("dataset-detail", args=[dataset.pk])).content.decode()
    assert f'{reverse("evaluation-create")}?model={model.pk}' in logged_in.get(
        reverse("model-detail", args=[model.pk])).content.decode()


def test_the_form_offers_only_active_models_with_an_endpoint(logged_in: Client) -> None:
    make_math_dataset(1)
    make_model("online")
    make_model("offline", base_url="")
    make_model("inactive", is_active=False)
    page = logged_in.get(reverse("evaluation-create")).content.decode()
    assert ">online</option>" in page and ">offline</option>" not in page and ">inactive</option>" not in page
    assert 'data-testid="no-models"' not in page


def test_the_form_says_what_to_do_when_no_model_can_be_evaluated(logged_in: Client) -> None:
    make_model("offline", base_url="")
    response = logged_in.get(reverse("evaluation-create"))
    assert "a model needs an endpoint URL and must be active" in by_testid(response, "no-models")
    assert "Upload a dataset" in text_of(response)


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"temperature": "3"}, "temperature", "temperature: 3.0 is outside [0.0, 2.0]"),
    ({"top_p": "-0.5"}, "top_p", "top_p: -0.5 is outside"),
    ({"max_tokens": "0"}, "max_tokens", "max_tokens: 0 is outside"),
    ({"stop": "a\nb\nc\nd\ne"}, "stop", "at most 4"),
    ({"split": "test"}, "split", "has no test queries"),
    ({"samples": "0"}, "samples", "greater than or equal to 1"),
    ({"samples": "101"}, "samples", "between 1 and 100"),
    ({"limit": "0"}, "limit", "greater than or equal to 1"),
    ({"models": []}, "models", "This field is required."),
    ({"temperature": "warm"}, "temperature", "Enter a number."),
    ({"split": "dev"}, "split", "Select a valid choice."),
])
def test_the_form_refuses_bad_input_with_a_message_on_the_field_and_creates_nothing(
        logged_in: Client, changes: dict[str, object], field: str, message: str) -> None:
    dataset = make_math_dataset(2)
    response = logged_in.post(reverse("evaluation-create"), form_data(dataset, make_model(), **changes))
    assert response.status_code == 200
    assert message in by_testid(response, f"error-{field}")
    assert not EvaluationRun.objects.exists()


def test_an_offline_or_inactive_model_cannot_be_posted(logged_in: Client) -> None:
    dataset = make_math_dataset(2)
    for model in (make_model("offline", base_url=""), make_model("inactive", is_active=False)):
        response = logged_in.post(reverse("evaluation-create"), form_data(dataset, model))
        assert "Select a valid choice." in by_testid(response, "error-models")
    assert not EvaluationRun.objects.exists()


# Who may do what ------------------------------------------------------------------------------------------------

def test_anonymous_users_are_sent_to_log_in_to_start_cancel_or_resume(anon_client: Client, user) -> None:  # type: ignore[no-untyped-def]
    client = anon_client
    dataset = make_math_dataset(2)
    model = make_model()
    run = services.evaluation_run_create(dataset=dataset, models=[model], queue=False)
    for method, url, data in [
        ("get", reverse("evaluation-create"), None),
        ("post", reverse("evaluation-create"), form_data(dataset, model)),
        ("post", reverse("evaluation-cancel", args=[run.pk]), None),
        ("post", reverse("evaluation-resume", args=[run.pk]), None),
    ]:
        response = getattr(client, method)(url, data)
        location = urlsplit(response["Location"])
        assert response.status_code == 302 and location.path == reverse("login"), (method, url)
        assert parse_qs(location.query) == {"next": [url]}, location.query
    assert EvaluationRun.objects.count() == 1
    run.refresh_from_db()
    assert run.status == "running"
    # reading needs a log-in too (unless AVENGERS_PUBLIC_READ)
    for name, args in [("evaluation-list", []), ("evaluation-detail", [run.pk]), ("evaluation-samples", [run.pk])]:
        response = client.get(reverse(name, args=args))
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_cancel_and_resume_are_post_only(logged_in: Client) -> None:
    run = services.evaluation_run_create(dataset=make_math_dataset(1), models=[make_model()], queue=False)
    assert logged_in.get(reverse("evaluation-cancel", args=[run.pk])).status_code == 405
    assert logged_in.get(reverse("evaluation-resume", args=[run.pk])).status_code == 405


def test_cancel_then_resume_from_the_run_page(logged_in: Client) -> None:
    dataset = make_math_dataset(4)
    model = make_model()
    run = services.evaluation_run_create(dataset=dataset, models=[model], samples=2, queue=False)
    detail = reverse("evaluation-detail", args=[run.pk])

    response = logged_in.post(reverse("evaluation-cancel", args=[run.pk]), follow=True)
    assert response.redirect_chain == [(detail, 302)]
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert f"Cancelled evaluation {run.pk}" in text_of(response)
    assert by_testid(response, "run-status") == "cancelled" and "Resume" in text_of(response)
    assert 'data-active="0"' in response.content.decode()

    # cancelling again says why it cannot
    again = logged_in.post(reverse("evaluation-cancel", args=[run.pk]), follow=True)
    assert "Could not cancel: run" in text_of(again) and "only a running run can be cancelled" in text_of(again)

    response = logged_in.post(reverse("evaluation-resume", args=[run.pk]), follow=True)
    run.refresh_from_db()
    assert run.status == "running" and run.batches.filter(status="pending").count() == 1
    assert f"Resumed evaluation {run.pk}" in text_of(response)
    assert by_testid(response, "run-status") == "running" and "Cancel" in text_of(response)

    # a running run with open batches cannot be resumed
    busy = logged_in.post(reverse("evaluation-resume", args=[run.pk]), follow=True)
    assert "Could not resume:" in text_of(busy) and "still running" in text_of(busy)


def test_a_cancelled_run_waits_for_its_requests_in_flight_before_offering_resume(logged_in: Client) -> None:
    run = services.evaluation_run_create(dataset=make_math_dataset(2), models=[make_model()], queue=False)
    run.batches.update(status="running")  # a lane is still finishing what it had sent
    services.evaluation_run_cancel(run=run)
    response = logged_in.get(reverse("evaluation-detail", args=[run.pk]))
    assert "1 batch still finishing the requests in flight" in by_testid(response, "run-settling")
    assert "Resume" not in text_of(response).replace("Resume becomes", "")
    assert 'data-active="1"' in response.content.decode()  # followed until they are saved
    run.batches.update(status="pending")
    response = logged_in.get(reverse("evaluation-detail", args=[run.pk]))
    assert 'data-testid="run-settling"' not in response.content.decode() and "Resume" in text_of(response)
    assert 'data-active="0"' in response.content.decode()


def test_a_finished_run_with_failures_offers_resume_and_one_without_does_not(logged_in: Client, finished_run) -> None:  # type: ignore[no-untyped-def]
    assert "Resume" in text_of(logged_in.get(reverse("evaluation-detail", args=[finished_run.pk])))
    clean = services.evaluation_run_create(dataset=make_math_dataset(1, name="one"), models=[make_model("m9")], queue=False)
    run_lane(clean, LanguageModel.objects.get(name="m9"), FakeLLMClient())
    page = logged_in.get(reverse("evaluation-detail", args=[clean.pk]))
    assert by_testid(page, "run-status") == "done" and "Resume" not in text_of(page) and "Cancel" not in text_of(page)


# The samples ----------------------------------------------------------------------------------------------------

def sample_ids(response) -> list[int]:  # type: ignore[no-untyped-def]
    return [int(i) for i in re.findall(r'data-sample-id="(\d+)"', response.content.decode())]


def test_the_samples_page_filters_by_model_verdict_and_text(client: Client, finished_run) -> None:  # type: ignore[no-untyped-def]
    url = reverse("evaluation-samples", args=[finished_run.pk])
    everything = client.get(url)
    assert everything.status_code == 200 and len(sample_ids(everything)) == 24
    assert by_testid(everything, "sample-count") == "24 samples"
    counts = {}
    for verdict in ("correct", "wrong", "ungraded", "failed"):
        response = client.get(url, {"verdict": verdict})
        counts[verdict] = len(sample_ids(response))
    assert counts == {"correct": 16, "wrong": 6, "ungraded": 0, "failed": 2}
    wrong = client.get(url, {"verdict": "wrong"})
    assert set(ModelResponse.objects.filter(pk__in=sample_ids(wrong)).values_list("correct", flat=True)) == {False}
    only_m2 = client.get(url, {"model": "m2", "verdict": "failed"})
    failed = ModelResponse.objects.filter(pk__in=sample_ids(only_m2))
    assert failed.count() == 2 and {r.model.name for r in failed} == {"m2"}
    assert "HTTP 400: prompt too long" in text_of(only_m2) and "client_error" in text_of(only_m2)
    search = client.get(url, {"q": "q4"})
    assert len(sample_ids(search)) == 4  # 2 models x 2 samples
    assert len(sample_ids(client.get(url, {"verdict": "bogus"}))) == 24  # an unknown verdict is ignored


def test_a_sample_shows_its_prompt_response_answer_gold_and_reason(client: Client, finished_run) -> None:  # type: ignore[no-untyped-def]
    sample = ModelResponse.objects.get(model__name="m1", query__external_id="q3", sample_index=1)
    response = client.get(reverse("evaluation-samples", args=[finished_run.pk]),
                          {"model": "m1", "q": "q3"})
    page = response.content.decode()
    block = re.search(rf'data-sample-id="{sample.pk}">(.*?)</tbody>', page, re.S)
    assert block, "the sample is not on the page"
    body = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", block.group(1))))
    assert sample.correct is False and sample.extracted == "7" and "wrong" in body
    for value in ("q3", "m1", "What is 3 + 3?", "\\boxed{7}", sample.grade_reason, "stop", "10 / 5", "no"):
        assert value in body, value
    assert "<details" in block.group(1) and 'href="/datasets/' in block.group(1)


def test_samples_are_paginated_25_to_a_page(client: Client) -> None:
    dataset = make_math_dataset(30)
    model = make_model()
    run = services.evaluation_run_create(dataset=dataset, models=[model], queue=False)
    run_lane(run, model, FakeLLMClient())
    url = reverse("evaluation-samples", args=[run.pk])
    first, second = client.get(url), client.get(url, {"page": 2})
    assert len(sample_ids(first)) == 25 and len(sample_ids(second)) == 5
    assert not set(sample_ids(first)) & set(sample_ids(second))
    assert "page 1 of 2" in text_of(first)


def test_prompt_templates_are_edited_on_the_dashboard_and_bad_ones_refused(client, user) -> None:  # type: ignore[no-untyped-def]
    from evaluation.models import Dataset, LanguageModel

    dataset = Dataset.objects.create(name="templated", split_seed=1)
    url = f"/datasets/{dataset.pk}/templates/"
    assert client.get(url).status_code == 403  # a viewer may not edit datasets
    client.force_login(user)
    page = client.get(url)
    assert page.status_code == 200 and "\\boxed" in page.content.decode()  # the defaults are shown
    bad = client.post(url, {"prompt_templates": '{"math": "no placeholder"}'})
    assert bad.status_code == 200 and "must be text containing {query}" in bad.content.decode()
    assert client.post(url, {"prompt_templates": '{"math": "Q: {query}"}'}).status_code == 302
    dataset.refresh_from_db()
    assert dataset.prompt_templates == {"math": "Q: {query}"}
    model = LanguageModel.objects.create(name="tpl-model", base_url="http://127.0.0.1:9/v1")
    response = client.post(f"/models/{model.pk}/edit/", {
        "name": "tpl-model", "base_url": "http://127.0.0.1:9/v1", "max_concurrency": 4,
        "prompt_templates": '{"": "<s>{query}</s>"}', "default_params": "{}",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    model.refresh_from_db()
    assert model.prompt_templates == {"": "<s>{query}</s>"}
    assert "&lt;s&gt;{query}&lt;/s&gt;" in client.get(f"/models/{model.pk}/").content.decode()
