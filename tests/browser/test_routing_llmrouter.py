"""The routing pages on a real K=64 snapshot of the LLMRouter records (9 models x 14 datasets), built by the
platform itself: the numbers on each page are the ones in the database, every chart is drawn."""
from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from evaluation.models import Dataset, LanguageModel
from evaluation.services import dataset_import_file
from routing import building, services
from routing.models import RouterSnapshot, SnapshotProfile
from tests.browser.conftest import PageLog
from tests.browser.test_dashboard import log_in, shot
from tests.browser.test_routing_pages import assert_chart_drawn

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_the_routing_pages_show_a_real_k64_snapshot(page: Page, live_server, user, llmrouter_records: Path,  # type: ignore[no-untyped-def]
                                                     screenshots: Path, page_log: PageLog) -> None:
    dataset_import_file(data=llmrouter_records.read_bytes(), filename=llmrouter_records.name)
    snapshot = services.snapshot_create(datasets=list(Dataset.objects.all()), models=list(LanguageModel.objects.all()),
                                        k=64, shrinkage=32, label="llmrouter", queue=False)
    assert building.snapshot_build(snapshot_id=snapshot.pk) == "built"
    snapshot = RouterSnapshot.objects.get(pk=snapshot.pk)
    coarse = services.snapshot_create(datasets=list(Dataset.objects.all()), models=list(LanguageModel.objects.all()),
                                      k=8, shrinkage=32, label="coarse", queue=False)
    assert building.snapshot_build(snapshot_id=coarse.pk) == "built"
    coarse = RouterSnapshot.objects.get(pk=coarse.pk)
    log_in(page, live_server)

    page.goto("/snapshots/")
    expect(page.locator("main")).to_contain_text("llmrouter")
    expect(page.locator("main")).to_contain_text("coarse")
    shot(page, screenshots, "llmrouter-snapshots")

    page.goto(f"/snapshots/{snapshot.pk}/?compare={coarse.pk}")
    expect(page.get_by_test_id("compare-heldout")).to_contain_text(
        f"{coarse.heldout['methods']['avengers']['in_distribution']:.1f}")
    shot(page, screenshots, "llmrouter-compare")

    page.goto(f"/snapshots/{snapshot.pk}/clusters/")
    expect(page.get_by_test_id("cluster-table").locator("tbody tr")).to_have_count(64)
    shot(page, screenshots, "llmrouter-clusters")

    page.goto(f"/snapshots/{snapshot.pk}/")
    expect(page.get_by_test_id("snapshot-status")).to_have_text("done")
    avengers = snapshot.heldout["methods"]["avengers"]["in_distribution"]
    expect(page.get_by_test_id("heldout-table")).to_contain_text(f"{avengers:.1f}")
    assert_chart_drawn(page, "heldout-chart")
    page.get_by_test_id("activate").click()
    expect(page.get_by_test_id("active-badge")).to_be_visible()
    shot(page, screenshots, "llmrouter-snapshot")

    biggest = snapshot.clusters.order_by("-size", "index").first()
    page.goto(f"/snapshots/{snapshot.pk}/clusters/{biggest.index}/")
    expect(page.get_by_test_id("cluster-size")).to_have_text(str(biggest.size))
    best = SnapshotProfile.objects.filter(snapshot=snapshot, cluster=biggest.index, rank=1).order_by("model__name")[0]
    expect(page.get_by_test_id("leaderboard-table").locator("tbody tr").first).to_contain_text(best.model.name)
    expect(page.get_by_test_id("leaderboard-table").locator("tbody tr")).to_have_count(9)
    shot(page, screenshots, "llmrouter-cluster")

    page.goto(f"/snapshots/{snapshot.pk}/heatmap/")
    expect(page.get_by_test_id("heatmap")).to_contain_text(best.model.name)
    shot(page, screenshots, "llmrouter-heatmap")

    page.goto(f"/snapshots/{snapshot.pk}/map/")
    chart = assert_chart_drawn(page, "map-chart")
    assert sum(chart["datasets"]) >= 5000  # every train query (5,608), or the documented sample of them
    shot(page, screenshots, "llmrouter-map")

    model = LanguageModel.objects.get(name=snapshot.team[0])
    page.goto(f"/models/{model.pk}/")
    expect(page.get_by_test_id("routing-profile")).to_be_visible()
    assert_chart_drawn(page, "profile-chart")
    shot(page, screenshots, "llmrouter-model-profile")
    page_log.assert_clean(live_server.url)
