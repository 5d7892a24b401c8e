"""The routing pages in a real headless Chromium, on snapshots written by hand: the list, a snapshot and its
comparison, activation, the clusters and a leaderboard, the heatmap, the map and a model's profile. Every chart
must be drawn (pixels on its canvas) by the vendored Chart.js, and every page served by the app alone."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PageLog
from tests.browser.test_dashboard import log_in, shot
from tests.support.snapshots import build_snapshot, heldout_json, random_snapshot

pytestmark = [pytest.mark.browser, pytest.mark.integration]

MODELS = ["qwen-7b", "llama-8b", "mistral-7b", "gemma-7b"]
DATASETS = ["gsm8k", "mmlu", "humaneval"]
K = 12
N_QUERIES = 300
HELDOUT = {
    "avengers": {"gsm8k": 71.2, "mmlu": 63.0, "humaneval": 49.4}, "avengers_soft": {"gsm8k": 70.1, "mmlu": 62.5, "humaneval": 48.0},
    "knn": {"gsm8k": 68.0, "mmlu": 61.1, "humaneval": 45.2}, "best_single": {"gsm8k": 66.3, "mmlu": 60.2, "humaneval": 44.0},
    "best_per_dataset": {"gsm8k": 69.5, "mmlu": 60.2, "humaneval": 47.7}, "random": {"gsm8k": 41.0, "mmlu": 38.5, "humaneval": 22.1},
    "oracle": {"gsm8k": 88.8, "mmlu": 80.4, "humaneval": 70.9},
}

# Pixels of a canvas that are not transparent: Chart.js drew something.
PAINTED = """(id) => {
  const c = document.getElementById(id);
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) n++;
  return n / (c.width * c.height);
}"""


def assert_chart_drawn(page: Page, canvas_id: str) -> dict:  # type: ignore[type-arg]
    """The chart exists in Chart.js, and its canvas is painted; return its type and data sizes."""
    # A click returns once the next page starts loading: wait until its scripts have made the chart.
    page.wait_for_function("(id) => window.Chart !== undefined && Chart.getChart(id) !== undefined", arg=canvas_id)
    info = page.evaluate("""(id) => {
      const chart = Chart.getChart(id);
      return chart ? {type: chart.config.type, datasets: chart.data.datasets.map((d) => d.data.length)} : null;
    }""", canvas_id)
    assert info is not None, f"no Chart.js chart on #{canvas_id}"
    painted = page.evaluate(PAINTED, canvas_id)
    assert painted > 0.01, f"#{canvas_id} is blank ({painted:.2%} painted)"
    return info


def cells(page: Page, selector: str) -> list[str]:
    return [t.strip() for t in page.locator(selector).all_inner_texts()]


@pytest.fixture
def snapshots(user):  # type: ignore[no-untyped-def]
    big = random_snapshot(version=1, k=K, n_queries=N_QUERIES, models=MODELS, datasets=DATASETS, user=user,
                          label="paper setup", heldout=heldout_json(HELDOUT, test_queries=381), team_size=3)
    small_heldout = {method: {name: value - 1.5 for name, value in values.items()} for method, values in HELDOUT.items()}
    small = build_snapshot(version=2, label="fewer clusters", kind="add_model", parent=big, user=user,
                           means={"qwen-7b": [0.8, 0.3], "llama-8b": [0.5, 0.7], "mistral-7b": [0.2, 0.4]},
                           assignments=[("gsm8k", 0)] * 6 + [("mmlu", 1)] * 4,
                           heldout=heldout_json(small_heldout, test_queries=381))
    return big, small


def test_routing_pages_show_snapshots_clusters_heatmap_map_and_profiles(
        page: Page, page_log: PageLog, live_server, snapshots, screenshots: Path,
) -> None:  # type: ignore[no-untyped-def]
    from evaluation.models import LanguageModel
    from routing.models import SnapshotActivation, SnapshotProfile

    big, small = snapshots
    log_in(page, live_server)

    # The list: both snapshots, newest first, with the Avengers held-out accuracy (mean of 71.2, 63.0, 49.4).
    page.click("header nav >> text=Routing")
    page.wait_for_url("**/snapshots/", wait_until="load")
    expect(page.locator("h1")).to_have_text("Router snapshots")
    rows = page.locator("table[data-testid=snapshot-table] tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("v2")
    expect(rows.nth(0)).to_contain_text("from v1")
    expect(rows.nth(1).locator("[data-col=heldout]")).to_have_text("61.2")
    expect(rows.nth(1)).to_contain_text(f"K={K}")
    shot(page, screenshots, "snapshot-list")

    # The detail page: team, held-out table and chart; then activate it.
    rows.nth(1).locator("a", has_text="v1").click()
    page.wait_for_url(f"**/snapshots/{big.pk}/", wait_until="load")
    expect(page.locator("h1")).to_contain_text("Snapshot v1")
    team = page.locator("table[data-testid=team-table] tbody tr")
    expect(team).to_have_count(len(MODELS))
    expect(page.locator("table[data-testid=team-table] .badge.team")).to_have_count(3)
    firsts = page.locator("table[data-testid=team-table] a.cluster-link")
    assert firsts.count() == K  # every cluster has exactly one rank-1 model, and each is a link
    heldout = page.locator("table[data-testid=heldout-table]")
    expect(heldout.locator('tr[data-row="gsm8k"] td').first).to_have_text("71.2")
    expect(heldout.locator('tr[data-row="In-distribution mean"] td').first).to_have_text("61.2")
    chart = assert_chart_drawn(page, "heldout-chart")
    assert chart == {"type": "bar", "datasets": [7]}
    expect(page.get_by_test_id("activations")).to_contain_text("Never activated.")
    shot(page, screenshots, "snapshot-detail")

    page.get_by_test_id("activate").click()
    expect(page.locator(".messages")).to_contain_text("is now the active router")
    expect(page.get_by_test_id("active-badge")).to_be_visible()
    expect(page.locator("table[data-testid=activation-table] tbody tr")).to_have_count(1)
    expect(page.locator("table[data-testid=activation-table] tbody tr")).to_contain_text("ada")
    assert SnapshotActivation.objects.get(snapshot=big).activated_by.username == "ada"

    # Compare with v2: its config and held-out table side by side, with the differences (1.5 everywhere).
    page.get_by_test_id("compare-select").select_option(str(small.pk))
    page.get_by_test_id("compare").locator("button[type=submit]").click()
    page.wait_for_url(re.compile(rf"\?compare={small.pk}$"), wait_until="load")
    compare = page.locator("table[data-testid=compare-heldout]")
    expect(compare.locator('tr[data-row="gsm8k"] td').nth(0)).to_have_text("71.2")
    expect(compare.locator('tr[data-row="gsm8k"] td').nth(1)).to_have_text("69.7")
    expect(compare.locator('tr[data-row="gsm8k"] td').nth(2)).to_have_text("+1.5")
    expect(page.locator("table[data-testid=compare-config] tr.differs")).not_to_have_count(0)
    page.get_by_test_id("compare").scroll_into_view_if_needed()
    shot(page, screenshots, "snapshot-compare")

    # The clusters, sorted by size by clicking the header, and one cluster's leaderboard.
    page.click("nav.tabs >> text=Clusters")
    page.wait_for_url(f"**/snapshots/{big.pk}/clusters/", wait_until="load")
    clusters = page.locator("table[data-testid=cluster-table] tbody tr")
    expect(clusters).to_have_count(K)
    page.click("table[data-testid=cluster-table] th a[data-sort=size]")
    page.wait_for_url("**/clusters/?sort=size", wait_until="load")
    sizes = [int(s) for s in cells(page, "table[data-testid=cluster-table] td[data-col=size]")]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == N_QUERIES
    shot(page, screenshots, "snapshot-clusters")

    largest = clusters.first.get_attribute("data-cluster")
    clusters.first.locator("a.cluster-link").click()
    page.wait_for_url(f"**/clusters/{largest}/", wait_until="load")
    expect(page.locator("h1")).to_contain_text(f"Cluster {largest}")
    expect(page.get_by_test_id("cluster-size")).to_have_text(str(sizes[0]))
    board = page.locator("table[data-testid=leaderboard-table] tbody tr")
    expect(board).to_have_count(len(MODELS))
    assert cells(page, "table[data-testid=leaderboard-table] td[data-col=rank]") == ["1", "2", "3", "4"]
    page.click("table[data-testid=leaderboard-table] th a[data-sort=mean]")
    page.wait_for_url(f"**/clusters/{largest}/?sort=mean", wait_until="load")
    means = [float(m) for m in cells(page, "table[data-testid=leaderboard-table] td[data-col=mean]")]
    assert means == sorted(means, reverse=True)
    expected = sorted((round(p.mean, 3) for p in SnapshotProfile.objects.filter(snapshot=big, cluster=int(largest))), reverse=True)
    assert means == expected
    expect(page.locator("table[data-testid=sample-table] tbody tr")).to_have_count(min(10, sizes[0]))
    shot(page, screenshots, "cluster-detail")

    # The heatmap: models x clusters, a value in every cell, columns link to the leaderboards.
    page.click("nav.tabs >> text=Capability heatmap")
    page.wait_for_url(f"**/snapshots/{big.pk}/heatmap/", wait_until="load")
    heat = page.locator("table[data-testid=heatmap]")
    expect(heat.locator("td.cell")).to_have_count(len(MODELS) * K)
    values = cells(page, "table[data-testid=heatmap] td.cell")
    assert all(re.fullmatch(r"\d\.\d\d", v) for v in values)
    expect(page.get_by_test_id("heat-legend")).to_contain_text("mean score")
    shot(page, screenshots, "snapshot-heatmap")
    first_column = heat.locator("thead th.col").first
    column = first_column.get_attribute("data-cluster")
    first_column.locator("a").click()
    expect(page.locator("h1")).to_contain_text(f"Cluster {column}")

    # The map: one scatter series per cluster, every query drawn, the cluster numbers at the centroids.
    page.click("nav.tabs >> text=Query map")
    page.wait_for_url(f"**/snapshots/{big.pk}/map/", wait_until="load")
    chart = assert_chart_drawn(page, "map-chart")
    assert chart["type"] == "scatter" and len(chart["datasets"]) == K and sum(chart["datasets"]) == N_QUERIES
    expect(page.get_by_test_id("map-summary")).to_contain_text(f"All {N_QUERIES} queries are shown.")
    expect(page.locator("table[data-testid=map-clusters] tbody tr")).to_have_count(K)
    shot(page, screenshots, "snapshot-map")

    # The model page: its profile in the active snapshot, one bar per cluster.
    model = LanguageModel.objects.get(name=MODELS[0])
    page.goto(f"/models/{model.pk}/")
    profile = page.get_by_test_id("routing-profile")
    expect(profile).to_contain_text("In snapshot v1")
    chart = assert_chart_drawn(page, "profile-chart")
    assert chart == {"type": "bar", "datasets": [K]}
    expect(profile.locator("table[data-testid=profile-table] tbody tr")).to_have_count(K)
    profile.scroll_into_view_if_needed()
    shot(page, screenshots, "model-profile")

    page_log.assert_clean(live_server.url)


def test_a_snapshot_that_is_building_is_followed_live(
        page: Page, page_log: PageLog, live_server, user, screenshots: Path,
) -> None:  # type: ignore[no-untyped-def]
    from routing.models import RouterSnapshot

    building = RouterSnapshot.objects.create(version=7, label="rebuilding", embedder="minilm", k=8,
                                             status=RouterSnapshot.Status.BUILDING, stage="embedding",
                                             progress_done=10, progress_total=100, created_by=user)

    def advance(**fields: object) -> None:
        RouterSnapshot.objects.filter(pk=building.pk).update(**fields)

    # The list follows the build (it reloads every 2 s while a snapshot builds).
    log_in(page, live_server)
    page.goto("/snapshots/")
    text = page.get_by_test_id("snapshot-progress-text")
    expect(text).to_have_text("embedding: 10 of 100")
    advance(progress_done=40)
    expect(text).to_have_text("embedding: 40 of 100", timeout=10_000)

    # The snapshot's page follows it through the API, then reloads once it has finished.
    page.goto(f"/snapshots/{building.pk}/")
    panel = page.get_by_test_id("live-progress")
    expect(panel.get_by_test_id("snapshot-progress-text")).to_have_text("embedding: 40 of 100")
    advance(stage="clustering", progress_done=3, progress_total=5, message="K-means, K=8")
    expect(panel.get_by_test_id("snapshot-progress-text")).to_have_text("clustering: 3 of 5", timeout=10_000)
    expect(panel.locator("[data-role=bar]")).to_have_attribute("style", re.compile(r"width:\s*60%"))
    expect(panel).to_contain_text("K-means, K=8")
    shot(page, screenshots, "snapshot-building")
    advance(status=RouterSnapshot.Status.DONE, stage="", message="built in 3 s")
    expect(page.get_by_test_id("snapshot-status")).to_have_text("done", timeout=10_000)
    expect(page.get_by_test_id("live-progress")).to_have_count(0)
    expect(page.get_by_test_id("snapshot-message")).to_have_text("built in 3 s")

    page.goto("/snapshots/")
    expect(page.locator(f'tr[data-snapshot="{building.pk}"] [data-role=status]')).to_have_text("done")
    page_log.assert_clean(live_server.url)
