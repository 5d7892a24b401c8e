"""The routing pages of the dashboard, rendered by Django's test client from snapshots written by hand."""
from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from evaluation.models import LanguageModel
from routing.models import RouterSnapshot, SnapshotActivation
from tests.support.snapshots import build_snapshot, heldout_json, make_model, random_snapshot

pytestmark = pytest.mark.django_db

# Per cluster: alpha leads cluster 0, beta cluster 1, gamma cluster 2. Rank scores (sum of 1/rank):
# alpha 1 + 1/3 + 1/3 = 1.667, beta 1/2 + 1 + 1/2 = 2.000, gamma 1/3 + 1/2 + 1 = 1.833; the team is beta, gamma.
MEANS = {"alpha": [0.9, 0.2, 0.5], "beta": [0.4, 0.8, 0.55], "gamma": [0.1, 0.3, 0.6]}
# Cluster sizes 5, 4 and 12; cluster 2 draws 8 trivia and 4 arith queries.
ASSIGNMENTS = [("arith", 0)] * 5 + [("trivia", 1)] * 3 + [("arith", 1)] + [("arith", 2)] * 4 + [("trivia", 2)] * 8
ORDER = [2, 0, 1]  # similarity order: cluster 2 first
HELDOUT_V1 = {
    "avengers": {"arith": 70.0, "trivia": 52.4}, "avengers_soft": {"arith": 69.0, "trivia": 50.0},
    "knn": {"arith": 66.0, "trivia": 48.0}, "best_single": {"arith": 64.0, "trivia": 45.0},
    "best_per_dataset": {"arith": 65.0, "trivia": 47.0}, "random": {"arith": 40.0, "trivia": 30.0},
    "oracle": {"arith": 90.0, "trivia": 80.0},
}
HELDOUT_V2 = {**HELDOUT_V1, "avengers": {"arith": 72.0, "trivia": 55.0}}  # in-distribution 63.5 (v1: 61.2)


# ---------------------------------------------------------------------------------------------- helpers


class _Tables(HTMLParser):
    """Collect the rows of every table: each row's attributes and the text of its cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[dict[str, str], list[str]]]] = {}
        self._stack: list[str] = []
        self._row: tuple[dict[str, str], list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "table":
            name = values.get("data-testid", f"table{len(self.tables)}")
            self._stack.append(name)
            self.tables[name] = []
        elif tag == "tr" and self._stack:
            self._row = (values, [])
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._stack:
            self._stack.pop()
        elif tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row[1].append(re.sub(r"\s+", " ", "".join(self._cell)).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._stack:
            self.tables[self._stack[-1]].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table(response, name: str) -> list[tuple[dict[str, str], list[str]]]:  # type: ignore[no-untyped-def]
    """The rows (attributes, cell texts) of the table with data-testid=name, header rows included."""
    parser = _Tables()
    parser.feed(response.content.decode())
    assert name in parser.tables, f"no table data-testid={name}; tables: {sorted(parser.tables)}"
    return parser.tables[name]


def body_rows(response, name: str, attribute: str) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    """The cells of the rows that carry ``attribute``, keyed by its value, in page order."""
    return {attrs[attribute]: cells for attrs, cells in table(response, name) if attribute in attrs}


def text_of(response) -> str:  # type: ignore[no-untyped-def]
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode())))


def json_data(response, element_id: str) -> object:  # type: ignore[no-untyped-def]
    match = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', response.content.decode(), re.S)
    assert match, f"no JSON data {element_id} on the page"
    return json.loads(match.group(1))


def cluster_url(snapshot: RouterSnapshot, index: int) -> str:
    return reverse("cluster-detail", args=[snapshot.pk, index])


@pytest.fixture
def v1(user) -> RouterSnapshot:  # type: ignore[no-untyped-def]
    return build_snapshot(version=1, label="first", means=MEANS, assignments=ASSIGNMENTS, order=ORDER, user=user,
                          heldout=heldout_json(HELDOUT_V1, test_queries=381))


@pytest.fixture
def v2(v1) -> RouterSnapshot:  # type: ignore[no-untyped-def]
    means = {**MEANS, "delta": [0.3, 0.9, 0.2]}
    return build_snapshot(version=2, means=means, assignments=ASSIGNMENTS[:12], kind=RouterSnapshot.Kind.ADD_MODEL,
                          parent=v1, heldout=heldout_json(HELDOUT_V2, test_queries=381), team_size=3)


@pytest.fixture
def logged_in(client: Client, user) -> Client:  # type: ignore[no-untyped-def]
    client.force_login(user)
    return client


# ---------------------------------------------------------------------------------------------- the list


def test_the_list_shows_every_snapshot_with_its_configuration_and_heldout_accuracy(client: Client, v1, v2) -> None:  # type: ignore[no-untyped-def]
    RouterSnapshot.objects.filter(pk=v1.pk).update(is_active=True)
    response = client.get(reverse("snapshot-list"))
    assert response.status_code == 200
    rows = body_rows(response, "snapshot-table", "data-snapshot")
    assert list(rows) == [str(v2.pk), str(v1.pk)]  # newest first
    version, label, kind, status, config, datasets, pool, team, heldout, created = rows[str(v1.pk)]
    assert version == "v1 active" and label == "first" and status == "done"
    assert config == "minilm · kmeans · K=3" and datasets == "arith, trivia" and pool == "3"
    assert team == "beta, gamma" and heldout == "61.2" and created.startswith("ada, ")
    version, label, kind, *_, heldout, _ = rows[str(v2.pk)]
    assert version == "v2" and label == "–" and kind == "a model added (same clusters) from v1" and heldout == "63.5"
    page = response.content.decode()
    assert f'href="{reverse("snapshot-detail", args=[v1.pk])}"' in page  # the parent links to its page
    assert "routing/progress.js" not in page  # nothing is building, so nothing is polled


def test_the_list_reads_the_same_number_of_queries_however_many_snapshots_it_shows(client: Client, v1) -> None:  # type: ignore[no-untyped-def]
    with CaptureQueriesContext(connection) as one:
        client.get(reverse("snapshot-list"))
    for version in (11, 12, 13):
        build_snapshot(version=version, means=MEANS, assignments=ASSIGNMENTS[:3], parent=v1,
                       heldout=heldout_json(HELDOUT_V1, test_queries=381))
    with CaptureQueriesContext(connection) as four:
        response = client.get(reverse("snapshot-list"))
    assert len(body_rows(response, "snapshot-table", "data-snapshot")) == 4
    assert len(four.captured_queries) == len(one.captured_queries)


def test_a_snapshot_that_is_building_shows_its_live_progress(client: Client, v1) -> None:  # type: ignore[no-untyped-def]
    building = RouterSnapshot.objects.create(version=3, embedder="minilm", k=8, status=RouterSnapshot.Status.BUILDING,
                                             stage="clustering", progress_done=2, progress_total=5, message="K=8")
    for url in (reverse("snapshot-list"), reverse("snapshot-detail", args=[building.pk])):
        response = client.get(url)
        page = response.content.decode()
        assert "routing/progress.js" in page
        assert f'data-status-url="{reverse("api-snapshot-detail", args=[building.pk])}"' in page
        assert "clustering: 2 of 5" in text_of(response)
        assert 'style="width:40%"' in page
    detail = client.get(reverse("snapshot-detail", args=[building.pk]))
    assert "measured when the build finishes" in text_of(detail)
    assert 'data-testid="activate"' not in detail.content.decode()


def test_the_list_says_how_to_build_a_snapshot_when_there_is_none(client: Client) -> None:
    response = client.get(reverse("snapshot-list"))
    assert "No snapshots yet" in text_of(response) and "calibrate" in text_of(response)


# ---------------------------------------------------------------------------------------------- the detail page


def test_the_detail_page_shows_the_team_with_rank_scores_and_first_places(client: Client, v1) -> None:  # type: ignore[no-untyped-def]
    response = client.get(reverse("snapshot-detail", args=[v1.pk]))
    assert response.status_code == 200
    rows = body_rows(response, "team-table", "data-model")
    assert list(rows) == ["beta", "gamma", "alpha"]  # by rank score
    assert rows["beta"] == ["1", "beta ✓ team", "2.000", "1"]
    assert rows["gamma"] == ["2", "gamma ✓ team", "1.833", "2"]
    assert rows["alpha"] == ["3", "alpha", "1.667", "0"]
    page = response.content.decode()
    for c in range(3):
        assert f'href="{cluster_url(v1, c)}"' in page
    alpha = LanguageModel.objects.get(name="alpha")
    assert f'href="{reverse("model-detail", args=[alpha.pk])}"' in page
    text = text_of(response)
    assert "kmeans, K = 3, seed 0" in text and "2 pseudo-queries" in text and "21 train, 381 test" in text
    assert body_rows(response, "shrinkage-cv", "class") == {"chosen": ["2 ✓", "60.4"]}
    for link in ("snapshot-heatmap", "snapshot-map", "snapshot-clusters"):
        assert f'href="{reverse(link, args=[v1.pk])}"' in page


def test_the_detail_page_shows_the_heldout_results_of_every_method(client: Client, v1) -> None:  # type: ignore[no-untyped-def]
    response = client.get(reverse("snapshot-detail", args=[v1.pk]))
    header, *rows = table(response, "heldout-table")
    assert header[1] == ["Test data", "Avengers", "Avengers (soft)", "kNN", "Best single", "Best per dataset",
                         "Random", "Oracle"]
    assert [cells for _, cells in rows] == [
        ["arith", "70.0", "69.0", "66.0", "64.0", "65.0", "40.0", "90.0"],
        ["trivia", "52.4", "50.0", "48.0", "45.0", "47.0", "30.0", "80.0"],
        ["In-distribution mean", "61.2", "59.5", "57.0", "54.5", "56.0", "35.0", "85.0"],
        ["Out-of-distribution mean", "–", "–", "–", "–", "–", "–", "–"],
    ]
    chart = json_data(response, "heldout-chart-data")
    assert chart["labels"][0] == "Avengers" and chart["values"][0] == pytest.approx(61.2)  # type: ignore[index]
    assert "(381 queries)" in text_of(response)


def test_the_detail_page_shows_the_router_it_routes_with_and_its_cv_table(client: Client, v1) -> None:  # type: ignore[no-untyped-def]
    # v1 was written as snapshots were before routers were chosen: it says so.
    assert "cluster profiles (built before routers were chosen)" in text_of(client.get(
        reverse("snapshot-detail", args=[v1.pk])))
    chosen = {"router": "dataset", "params": {"shrinkage": "inf"}, "label": "dataset(shrinkage=inf)"}
    routed = build_snapshot(version=7, means=MEANS, assignments=ASSIGNMENTS, router="auto", router_chosen=chosen,
                            router_cv=[{"label": "dataset(shrinkage=inf)", "folds": [60.0, 62.0]},
                                       {"label": "cluster(shrinkage=0)", "folds": [58.0, 59.0]}])
    response = client.get(reverse("snapshot-detail", args=[routed.pk]))
    assert "dataset(shrinkage=inf) (chosen by CV)" in text_of(response)
    assert body_rows(response, "router-cv", "class") == {"chosen": ["dataset(shrinkage=inf) ✓", "61.0"]}
    rows = [cells for _, cells in table(response, "router-cv")]
    assert rows[-2:] == [["dataset(shrinkage=inf) ✓", "61.0"], ["cluster(shrinkage=0)", "58.5"]]


def test_a_snapshot_without_a_test_split_says_so(client: Client) -> None:
    snapshot = build_snapshot(version=5, means=MEANS, assignments=ASSIGNMENTS, heldout={})
    response = client.get(reverse("snapshot-detail", args=[snapshot.pk]))
    assert "the datasets have no test split" in text_of(response)
    assert "heldout-chart-data" not in response.content.decode()


def test_compare_puts_two_snapshots_side_by_side_with_the_differences(client: Client, v1, v2) -> None:  # type: ignore[no-untyped-def]
    response = client.get(reverse("snapshot-detail", args=[v2.pk]), {"compare": v1.pk})
    config = body_rows(response, "compare-config", "class")
    assert config["differs"]  # at least one row differs; check which below
    rows = {cells[0]: cells[1:] for _, cells in table(response, "compare-config")[1:]}
    assert rows["Kind differs"] == ["a model added (same clusters)", "built from scratch"]
    assert rows["Pool differs"] == ["alpha, beta, delta, gamma", "alpha, beta, gamma"]
    assert rows["K (clusters)"] == ["3", "3"] and rows["Embedder"] == ["minilm", "minilm"]
    assert rows["Train queries differs"] == ["12", "21"]
    heldout = body_rows(response, "compare-heldout", "data-row")
    # per method: this, other, difference (this − other)
    assert heldout["arith"][1:4] == ["72.0", "70.0", "+2.0"]
    assert heldout["In-distribution mean"][1:4] == ["63.5", "61.2", "+2.3"]
    assert heldout["In-distribution mean"][4:7] == ["59.5", "59.5", "0.0"]
    assert heldout["Out-of-distribution mean"][1:4] == ["–", "–", "–"]
    reverse_view = client.get(reverse("snapshot-detail", args=[v1.pk]), {"compare": v2.pk})
    assert body_rows(reverse_view, "compare-heldout", "data-row")["trivia"][1:4] == ["52.4", "55.0", "−2.6"]


def test_compare_with_a_snapshot_that_does_not_exist_is_not_found(client: Client, v1) -> None:  # type: ignore[no-untyped-def]
    assert client.get(reverse("snapshot-detail", args=[v1.pk]), {"compare": 999999}).status_code == 404
    assert client.get(reverse("snapshot-detail", args=[999999])).status_code == 404


# ---------------------------------------------------------------------------------------------- clusters


def test_the_cluster_list_shows_sizes_top_datasets_and_best_models(client: Client, v1) -> None:  # type: ignore[no-untyped-def]
    response = client.get(reverse("snapshot-clusters", args=[v1.pk]))
    rows = body_rows(response, "cluster-table", "data-cluster")
    assert rows == {
        "0": ["0", "5", "arith (5)", "alpha", "0.900", "0.860"],
        "1": ["1", "4", "trivia (3), arith (1)", "beta", "0.800", "0.770"],
        "2": ["2", "12", "trivia (8), arith (4)", "gamma", "0.600", "0.590"],
    }
    page = response.content.decode()
    assert all(f'href="{cluster_url(v1, c)}"' in page for c in range(3))


@pytest.mark.parametrize(("sort", "expected"), [
    ("index", ["0", "1", "2"]), ("-index", ["2", "1", "0"]),
    ("size", ["2", "0", "1"]), ("-size", ["1", "0", "2"]),
    ("best", ["0", "1", "2"]), ("-best", ["2", "1", "0"]),
    ("nonsense", ["0", "1", "2"]),
])
def test_the_cluster_list_sorts_by_the_column_asked_for(client: Client, v1, sort: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    response = client.get(reverse("snapshot-clusters", args=[v1.pk]), {"sort": sort})
    assert list(body_rows(response, "cluster-table", "data-cluster")) == expected


def test_the_cluster_page_shows_its_leaderboard_datasets_and_sample_queries(client: Client, v1) -> None:  # type: ignore[no-untyped-def]
    response = client.get(cluster_url(v1, 2))
    assert response.status_code == 200
    assert re.search(r'data-testid="cluster-size">12<', response.content.decode())
    leaderboard = body_rows(response, "leaderboard-table", "data-model")
    assert leaderboard == {
        "gamma": ["1", "gamma team", "0.600", "0.590", "12"],
        "beta": ["2", "beta team", "0.550", "0.545", "12"],
        "alpha": ["3", "alpha", "0.500", "0.500", "12"],
    }
    datasets = {cells[0]: cells[1:] for attrs, cells in table(response, "dataset-table") if "data-dataset" in attrs}
    assert datasets == {"trivia": ["8", "67%"], "arith": ["4", "33%"]}
    samples = [cells for attrs, cells in table(response, "sample-table") if attrs.get("data-testid") == "sample-query"]
    assert len(samples) == 10  # of 12
    assert all(cells[2] in ("arith", "trivia") and cells[3] == "train" and "(cluster 2)" in cells[1] for cells in samples)
    assert "The first 10 of the cluster's 12 train queries." in text_of(response)


@pytest.mark.parametrize(("sort", "expected"), [
    ("rank", ["gamma", "beta", "alpha"]), ("-rank", ["alpha", "beta", "gamma"]),
    ("model", ["alpha", "beta", "gamma"]), ("mean", ["gamma", "beta", "alpha"]),
    ("-mean", ["alpha", "beta", "gamma"]), ("estimate", ["gamma", "beta", "alpha"]),
])
def test_the_leaderboard_sorts_by_the_column_asked_for(client: Client, v1, sort: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    response = client.get(cluster_url(v1, 2), {"sort": sort})
    assert list(body_rows(response, "leaderboard-table", "data-model")) == expected


def test_a_cluster_that_does_not_exist_is_not_found(client: Client, v1) -> None:  # type: ignore[no-untyped-def]
    assert client.get(cluster_url(v1, 3)).status_code == 404


# ---------------------------------------------------------------------------------------------- heatmap and map


def test_the_heatmap_shows_every_mean_in_similarity_order_with_links_to_the_clusters(client: Client, v1) -> None:  # type: ignore[no-untyped-def]
    response = client.get(reverse("snapshot-heatmap", args=[v1.pk]))
    header, sizes, *rows = table(response, "heatmap")
    assert header[1] == ["cluster →", "2", "0", "1"]  # the similarity order
    assert sizes[1] == ["queries", "12", "5", "4"]
    assert {cells[0]: cells[1:] for _, cells in rows} == {
        "beta team 2.00": ["0.55", "0.40", "0.80"],
        "gamma team 1.83": ["0.60", "0.10", "0.30"],
        "alpha 1.67": ["0.50", "0.90", "0.20"],
    }
    page = response.content.decode()
    assert all(f'href="{cluster_url(v1, c)}"' in page for c in range(3))
    assert page.count('class="cell first"') == 3  # one rank-1 model per cluster
    assert 'data-testid="heat-legend"' in page and "background:rgb(253,231,37)" in page  # 1.0 on the legend


def test_the_heatmap_of_many_clusters_keeps_the_colours_and_drops_the_numbers(client: Client) -> None:
    snapshot = random_snapshot(version=9, k=70, n_queries=140, models=["m1", "m2"], datasets=["arith"])
    response = client.get(reverse("snapshot-heatmap", args=[snapshot.pk]))
    _, _, *rows = table(response, "heatmap")
    assert len(rows) == 2 and len(rows[0][1]) == 71
    assert all(cell == "" for _, cells in rows for cell in cells[1:])
    assert "values hidden with more than 64 clusters" in text_of(response)


def test_the_map_draws_every_query_and_every_centroid(client: Client, v1) -> None:  # type: ignore[no-untyped-def]
    response = client.get(reverse("snapshot-map", args=[v1.pk]))
    data = json_data(response, "map-chart-data")
    assert len(data["points"]) == 21 and sorted(c[2] for c in data["centroids"]) == [0, 1, 2]  # type: ignore[index]
    assert data["cluster_url"] == cluster_url(v1, 0).removesuffix("0/") + "{index}/"  # type: ignore[index]
    assert "All 21 queries are shown." in text_of(response)
    assert body_rows(response, "map-clusters", "data-cluster") == {"0": ["0", "5", "5"], "1": ["1", "4", "4"],
                                                                   "2": ["2", "12", "12"]}


def test_the_map_of_a_big_snapshot_is_a_fixed_sample_and_says_so(client: Client, v1, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("routing.selectors.MAP_MAX_POINTS", 8)
    first = client.get(reverse("snapshot-map", args=[v1.pk]))
    again = client.get(reverse("snapshot-map", args=[v1.pk]))
    assert len(json_data(first, "map-chart-data")["points"]) == 8  # type: ignore[index]
    assert json_data(first, "map-chart-data") == json_data(again, "map-chart-data")
    assert "Showing 8 of 21 queries" in text_of(first)
    shown = body_rows(first, "map-clusters", "data-cluster")
    assert sum(int(cells[2]) for cells in shown.values()) == 8


# ---------------------------------------------------------------------------------------------- the model page


def test_the_model_page_shows_its_profile_in_the_active_snapshot(client: Client, v1, v2) -> None:  # type: ignore[no-untyped-def]
    RouterSnapshot.objects.filter(pk=v1.pk).update(is_active=True)
    alpha = LanguageModel.objects.get(name="alpha")
    response = client.get(reverse("model-detail", args=[alpha.pk]))
    assert response.status_code == 200
    rows = body_rows(response, "profile-table", "data-cluster")
    assert list(rows) == ["2", "0", "1"]  # similarity order
    assert rows["0"] == ["0", "5", "5", "0.900", "0.860", "1 ★"]
    assert rows["2"] == ["2", "12", "12", "0.500", "0.500", "3"]
    assert re.search(r'data-testid="profile-rank-score">1.667<', response.content.decode())
    assert f'href="{cluster_url(v1, 0)}" class="cluster-link">cluster 0<' in response.content.decode()
    chart = json_data(response, "profile-chart-data")
    assert chart["labels"] == ["2", "0", "1"] and chart["values"] == [0.5, 0.9, 0.2]  # type: ignore[index]
    assert chart["highlight"] == [0] and chart["links"][1] == cluster_url(v1, 0)  # type: ignore[index]
    assert "not in the team" in text_of(response)

    other = client.get(reverse("model-detail", args=[alpha.pk]), {"snapshot": v2.pk})
    assert "In snapshot v2" in text_of(other)
    assert json_data(other, "profile-chart-data")["values"] == [0.9, 0.2, 0.5]  # type: ignore[index]


def test_the_model_page_says_when_there_is_no_profile(client: Client, v1) -> None:  # type: ignore[no-untyped-def]
    alpha = LanguageModel.objects.get(name="alpha")
    assert "No router snapshot is active yet: choose one above." in text_of(client.get(reverse("model-detail", args=[alpha.pk])))
    outsider = make_model("outsider")
    response = client.get(reverse("model-detail", args=[outsider.pk]), {"snapshot": v1.pk})
    assert "Snapshot v1 did not profile outsider." in text_of(response)
    assert "profile-chart-data" not in response.content.decode()


# ---------------------------------------------------------------------------------------------- activation


def test_activating_needs_a_login_and_the_admin_role(anon_client: Client, client: Client, v1,
                                                    public_read) -> None:  # type: ignore[no-untyped-def]
    assert client.post(reverse("snapshot-activate", args=[v1.pk])).status_code == 403  # a viewer
    client = anon_client
    response = client.post(reverse("snapshot-activate", args=[v1.pk]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    v1.refresh_from_db()
    assert not v1.is_active and not SnapshotActivation.objects.exists()
    page = client.get(reverse("snapshot-detail", args=[v1.pk])).content.decode()
    assert 'data-testid="activate"' not in page and "Log in to activate" in page


def test_activating_records_who_and_when_and_replaces_the_active_snapshot(logged_in: Client, user, v1, v2) -> None:  # type: ignore[no-untyped-def]
    assert logged_in.get(reverse("snapshot-activate", args=[v1.pk])).status_code == 405
    response = logged_in.post(reverse("snapshot-activate", args=[v1.pk]), follow=True)
    assert "v1 (first) is now the active router." in text_of(response)
    activation = SnapshotActivation.objects.get(snapshot=v1)
    assert activation.activated_by == user
    rows = [cells for attrs, cells in table(response, "activation-table") if attrs.get("data-testid") == "activation"]
    assert rows == [[f"{timezone.localtime(activation.activated_at):%Y-%m-%d %H:%M:%S}", "ada"]]
    assert 'data-testid="active-badge"' in response.content.decode()

    logged_in.post(reverse("snapshot-activate", args=[v2.pk]))
    v1.refresh_from_db(), v2.refresh_from_db()
    assert v2.is_active and not v1.is_active
    assert list(RouterSnapshot.objects.filter(is_active=True)) == [v2]


def test_a_snapshot_that_is_not_finished_cannot_be_activated(logged_in: Client) -> None:
    building = RouterSnapshot.objects.create(version=4, embedder="minilm", k=8, status=RouterSnapshot.Status.BUILDING)
    response = logged_in.post(reverse("snapshot-activate", args=[building.pk]), follow=True)
    assert "Could not activate" in text_of(response)
    building.refresh_from_db()
    assert not building.is_active and not SnapshotActivation.objects.exists()
