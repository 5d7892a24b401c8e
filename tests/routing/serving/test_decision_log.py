"""The decision log's writer: rows encoded as COPY text, written in bulk with every column as given, one bad row
losing only itself."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from routing.models import RoutingDecision
from routing.serving import decision_log
from tests.support.snapshots import build_snapshot

pytestmark = pytest.mark.django_db


def _row(request_id: str, **fields: object) -> RoutingDecision:
    values: dict[str, object] = {
        "request_id": request_id, "created_at": timezone.now(), "endpoint": RoutingDecision.Endpoint.ANSWER,
        "query": "What is 1/2?", "query_sha256": "ab" * 32, "query_chars": 12,
    }
    values.update(fields)
    return RoutingDecision(**values)


def test_a_batch_is_written_with_every_column_as_given() -> None:
    user = get_user_model().objects.create_user(username="reader", password="pw-for-tests")
    snapshot = build_snapshot(version=1, means={"alpha": [0.9, 0.2]}, assignments=[("gsm8k", 0), ("mmlu", 1)],
                              team_size=1)
    when = dt.datetime(2026, 12, 1, 12, 30, 15, 123456, tzinfo=dt.timezone.utc)
    full = _row("dec_full", created_at=when, user=user, token_prefix="avg_abc", snapshot=snapshot, cluster=1,
                similarity=0.8125, category="gsm8k", runner_ups=[{"cluster": 0, "similarity": 0.5}],
                candidates=[{"model": "alpha", "score": None, "rank": 1, "in_team": True, "skipped": "it's \"down\""}],
                strategy="self_consistency", task_type="math", chosen_model="alpha", models_used=["alpha"],
                fallback=True, failures=[{"model": "beta", "kind": "timeout", "message": "tab\there\nnewline\\"}],
                samples=[{"model": "alpha", "index": 0, "text": "½ = 0.5 \\frac{1}{2}", "answer": "0.5", "key": "1/2",
                          "finish_reason": "stop"}],
                tally=[["1/2", 2]], final_answer="0.5", agreement=1.0, prompt_tokens=10, completion_tokens=20,
                timings_ms={"embed": 0.1, "total": 5.5}, total_ms=5.5, status_code=200, error="")
    numpy = _row("dec_numpy", cluster=np.int64(3), similarity=np.float32(0.25), total_ms=np.float64(1.5))
    bare = _row("dec_bare", endpoint=RoutingDecision.Endpoint.ROUTE, query="", status_code=503,
                error="No model could answer:\n- alpha: no endpoint")

    decision_log._write([decision_log.encode(row) for row in (full, numpy, bare)])

    got = RoutingDecision.objects.get(request_id="dec_full")
    for field in decision_log._FIELDS:
        assert getattr(got, field.attname) == getattr(full, field.attname), field.name
    assert RoutingDecision.objects.filter(request_id="dec_numpy", cluster=3, similarity=0.25, total_ms=1.5).exists()
    other = RoutingDecision.objects.get(request_id="dec_bare")
    assert other.user_id is None and other.snapshot_id is None and other.cluster is None and other.agreement is None
    assert other.candidates == [] and other.timings_ms == {} and other.error == bare.error


def test_one_bad_row_in_a_batch_loses_only_itself() -> None:
    RoutingDecision.objects.create(**{f.attname: getattr(_row("dec_taken"), f.attname) for f in decision_log._FIELDS})
    before = decision_log.stats()
    rows = [_row("dec_a"), _row("dec_taken"), _row("dec_b")]  # the second repeats a unique request id

    decision_log._write([decision_log.encode(row) for row in rows])

    assert set(RoutingDecision.objects.values_list("request_id", flat=True)) == {"dec_taken", "dec_a", "dec_b"}
    after = decision_log.stats()
    assert after["written"] - before["written"] == 2 and after["failed"] - before["failed"] == 1
    assert connection.is_usable()  # the caller's transaction is still usable after the failed COPY


def test_submit_never_raises_and_counts_what_it_could_not_write(monkeypatch) -> None:
    def broken(rows: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(decision_log, "_copy", broken)
    before = decision_log.stats()["failed"]
    with override_settings(DECISION_LOG_MODE="inline"):
        decision_log.submit(_row("dec_lost"))
    assert decision_log.stats()["failed"] == before + 1
    assert not RoutingDecision.objects.filter(request_id="dec_lost").exists()


@pytest.mark.django_db(transaction=True)
def test_the_background_writer_writes_what_was_submitted_once_flushed() -> None:
    before = decision_log.stats()["written"]
    with override_settings(DECISION_LOG_MODE="background"):
        for i in range(120):
            decision_log.submit(_row(f"dec_bg_{i}", cluster=i % 7, candidates=[{"model": "m", "rank": 1}]))
        assert decision_log.flush(30)
    assert decision_log.stats()["written"] - before == 120
    assert RoutingDecision.objects.filter(request_id__startswith="dec_bg_").count() == 120
    assert sorted(set(RoutingDecision.objects.values_list("cluster", flat=True))) == list(range(7))


def test_text_that_copy_or_postgresql_would_choke_on_is_kept() -> None:
    awkward = "tab\there, newline\n, CR\r, backslash \\N \\t, a literal \\u0000, NUL \x00 end"
    row = _row("dec_awkward", query=awkward, final_answer="\\frac{1}{2}\x00",
               samples=[{"model": "m", "index": 0, "text": awkward, "answer": None, "key": None,
                         "finish_reason": "stop"}])
    decision_log._write([decision_log.encode(row)])

    got = RoutingDecision.objects.get(request_id="dec_awkward")
    kept = awkward.replace("\x00", "\ufffd")  # PostgreSQL's text cannot hold NUL; the rest is as sent
    assert got.query == kept and got.samples[0]["text"] == kept and got.final_answer == "\\frac{1}{2}\ufffd"
