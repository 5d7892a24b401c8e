"""`manage.py evaluate`: start a run against a real HTTP server in this process, follow it, cancel and resume."""
from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from evaluation.models import Dataset, EvaluationRun, LanguageModel, ModelResponse
from tests.support.fault_server import fault_server
from tests.support.math_queries import make_math_dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def dataset() -> Dataset:
    """cmd: "0 * 7?", "1 * 7?", "2 * 7?", all in the train split."""
    return make_math_dataset(3, name="cmd", text="{i} * 7?", times=7)


def test_evaluate_runs_inline_against_a_server_and_prints_the_accuracy(dataset) -> None:  # type: ignore[no-untyped-def]
    with fault_server(content=lambda body: "\\boxed{7}") as server:
        LanguageModel.objects.create(name="cli-model", base_url=server.base_url, max_concurrency=2)
        out = StringIO()
        call_command("evaluate", "--models", "cli-model", "--dataset", "cmd", "--samples", "2", "--seed", "4",
                     "--max-tokens", "32", "--inline", stdout=out)
    text = out.getvalue()
    run = EvaluationRun.objects.get()
    assert run.status == "done" and run.params == {"seed": 4, "max_tokens": 32}
    assert f"run {run.pk}: running" in text and "6/6 done, 0 failed, 0 remaining" in text
    assert "cli-model: 6 done, 0 failed, 0 from cache, accuracy 33.3%" in text
    assert server.requests == 6 and ModelResponse.objects.filter(correct=True).count() == 2


def test_evaluate_cancels_and_resumes_a_run(dataset) -> None:  # type: ignore[no-untyped-def]
    with fault_server(content=lambda body: "\\boxed{0}") as server:
        LanguageModel.objects.create(name="cli-model", base_url=server.base_url)
        call_command("evaluate", "--models", "cli-model", "--dataset", "cmd", "--no-wait", stdout=StringIO())
        run = EvaluationRun.objects.get()
        out = StringIO()
        call_command("evaluate", "--cancel", str(run.pk), stdout=out)
        assert out.getvalue().strip() == f"run {run.pk}: cancelled"
        out = StringIO()
        call_command("evaluate", "--resume", str(run.pk), "--inline", stdout=out)
    assert "3/3 done" in out.getvalue() and EvaluationRun.objects.get().status == "done"
    assert server.requests == 3


@pytest.mark.parametrize(("arguments", "message"), [
    ([], "give --models and --dataset"),
    (["--models", "ghost", "--dataset", "cmd"], "there is no model 'ghost'"),
    (["--models", "cli-model", "--dataset", "nope"], "there is no dataset 'nope'"),
    (["--models", "cli-model", "--dataset", "cmd", "--samples", "0"], "samples: must be between 1 and 100"),
    (["--models", "cli-model", "--dataset", "cmd", "--temperature", "3"], "temperature: 3.0 is outside"),
    (["--resume", "999"], "there is no run 999"),
])
def test_evaluate_explains_bad_arguments_and_starts_nothing(dataset, arguments, message) -> None:  # type: ignore[no-untyped-def]
    LanguageModel.objects.create(name="cli-model", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(CommandError, match=message):
        call_command("evaluate", *arguments, stdout=StringIO())
    assert not EvaluationRun.objects.exists()
