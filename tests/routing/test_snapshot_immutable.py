"""A built snapshot is immutable: the admin edits only its label, the model refuses the rest, revisions count changes.

The routing service reloads a snapshot's table when its revision changes (tests/integration/test_table_freshness.py
checks that across gunicorn workers); here, what may change and what bumps the revision.
"""
from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from django.urls import reverse

from evaluation.models import Dataset
from routing import services as routing_services
from routing.models import RouterSnapshot, SnapshotCluster, SnapshotProfile
from routing.serving import ServingError, service, tables
from tests.support.snapshots import build_snapshot

pytestmark = pytest.mark.django_db

MEANS = {"alpha": [0.9, 0.3, 0.5], "beta": [0.6, 0.8, 0.4], "gamma": [0.2, 0.1, 0.95]}
ASSIGNMENTS = [("gsm8k", 0), ("gsm8k", 0), ("mmlu", 1), ("mmlu", 1), ("mbpp", 2)]
ROUTED = ("k", "embedder", "method", "shrinkage", "shrinkage_setting", "team", "router", "router_chosen", "status")


@pytest.fixture
def snapshot() -> RouterSnapshot:
    return build_snapshot(version=1, means=MEANS, assignments=ASSIGNMENTS, label="first", shrinkage_setting="2.0")


def routed(snapshot: RouterSnapshot) -> dict[str, Any]:
    row = RouterSnapshot.objects.get(pk=snapshot.pk)
    return {**{name: getattr(row, name) for name in ROUTED},
            "datasets": sorted(row.datasets.values_list("name", flat=True)),
            "clusters": list(row.clusters.order_by("index").values_list("index", "size")),
            "profiles": list(row.profiles.order_by("cluster", "model__name").values_list("estimate", flat=True))}


def change_form(client: Client, snapshot: RouterSnapshot) -> dict[str, Any]:
    """Every field of the admin's change form as the page fills it in, ready to post back."""
    response = client.get(reverse("admin:routing_routersnapshot_change", args=[snapshot.pk]))
    assert response.status_code == 200
    form = response.context["adminform"].form
    data: dict[str, Any] = {"_save": "Save"}
    for name in form.fields:
        value = form[name].value()
        if value is None or value is False:
            continue
        data[name] = "on" if value is True else [str(v) for v in value] if isinstance(value, list | tuple) else value
    return data


def test_the_admin_saves_a_new_label_and_ignores_a_changed_k_embedder_shrinkage_and_datasets(  # type: ignore[no-untyped-def]
        admin_client: Client, snapshot) -> None:
    before = routed(snapshot)
    revision = RouterSnapshot.objects.get(pk=snapshot.pk).__dict__.get("revision", 0)
    other = Dataset.objects.create(name="trivia_qa", split_seed=1)
    data = change_form(admin_client, snapshot)
    data.update(label="renamed", k="64", embedder="e5-small", shrinkage="9.5", shrinkage_setting="9.5",
                method="spectral", team='["gamma"]', router="knn", status="failed", datasets=[str(other.pk)])

    response = admin_client.post(reverse("admin:routing_routersnapshot_change", args=[snapshot.pk]), data)

    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    assert routed(snapshot) == before
    row = RouterSnapshot.objects.get(pk=snapshot.pk)
    assert row.label == "renamed" and row.revision == revision + 1


def test_the_admin_offers_no_add_form_and_no_edits_of_clusters_or_profiles(admin_client: Client, snapshot) -> None:  # type: ignore[no-untyped-def]
    assert admin_client.get(reverse("admin:routing_routersnapshot_add")).status_code == 403
    for name in ("routersnapshot", "snapshotcluster", "snapshotquery", "snapshotprofile", "snapshotactivation"):
        assert admin_client.get(reverse(f"admin:routing_{name}_changelist")).status_code == 200, name
    cluster = SnapshotCluster.objects.filter(snapshot=snapshot).first()
    url = reverse("admin:routing_snapshotcluster_change", args=[cluster.pk])
    assert admin_client.get(url).status_code == 200  # shown, read-only
    admin_client.post(url, {"index": "2", "size": "99", "order": "0", "dimensions": "384", "x": "0", "y": "0",
                            "datasets": "{}", "snapshot": str(snapshot.pk)})
    assert SnapshotCluster.objects.get(pk=cluster.pk).size == cluster.size
    assert admin_client.get(reverse("admin:routing_snapshotprofile_add")).status_code == 403
    profile = SnapshotProfile.objects.filter(snapshot=snapshot).first()
    response = admin_client.post(reverse("admin:routing_snapshotprofile_delete", args=[profile.pk]), {"post": "yes"})
    assert response.status_code == 403 and SnapshotProfile.objects.filter(pk=profile.pk).exists()


def test_the_model_refuses_to_change_what_a_snapshot_routes_with(snapshot) -> None:  # type: ignore[no-untyped-def]
    from routing.models import SnapshotImmutable

    before = routed(snapshot)
    for name, value in (("k", 64), ("embedder", "e5-small"), ("shrinkage", 9.5), ("team", ["gamma"]),
                        ("router_chosen", {"router": "knn"})):
        row = RouterSnapshot.objects.get(pk=snapshot.pk)
        setattr(row, name, value)
        with pytest.raises(SnapshotImmutable, match=name):
            row.save()
        with pytest.raises(SnapshotImmutable):
            row.save(update_fields=[name])
    other = Dataset.objects.create(name="trivia_qa", split_seed=1)
    with pytest.raises(SnapshotImmutable), transaction.atomic():
        snapshot.datasets.add(other)
    cluster = SnapshotCluster.objects.filter(snapshot=snapshot).first()
    cluster.size = 99
    with pytest.raises(SnapshotImmutable):
        cluster.save()
    assert routed(snapshot) == before


def test_a_label_edit_and_each_activation_bump_the_revisions_it_changes(snapshot) -> None:  # type: ignore[no-untyped-def]
    other = build_snapshot(version=2, means=MEANS, assignments=[("gsm8k", 0), ("mmlu", 1), ("mbpp", 2)], seed=3)
    row = RouterSnapshot.objects.get(pk=snapshot.pk)
    start = row.revision
    row.label = "renamed"
    row.save()
    assert row.revision == start + 1 and RouterSnapshot.objects.get(pk=snapshot.pk).revision == start + 1
    row.save()  # nothing changed: no new revision
    assert RouterSnapshot.objects.get(pk=snapshot.pk).revision == start + 1

    other_start = RouterSnapshot.objects.get(pk=other.pk).revision
    routing_services.snapshot_activate(snapshot=snapshot)
    assert RouterSnapshot.objects.get(pk=snapshot.pk).revision == start + 2
    routing_services.snapshot_activate(snapshot=other)
    revisions = dict(RouterSnapshot.objects.values_list("pk", "revision"))
    assert revisions == {snapshot.pk: start + 3, other.pk: other_start + 1}  # deactivated, activated


def test_a_process_switches_with_the_active_snapshot_and_never_serves_a_deleted_one_from_its_cache(snapshot, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ROUTING_REFRESH_S = 0
    tables.forget()
    routing_services.snapshot_activate(snapshot=snapshot)
    served = service.route(service.Request(query="What is 2 + 2?", endpoint="route"))
    assert served.snapshot.id == snapshot.pk
    other = build_snapshot(version=2, means=MEANS, assignments=[("gsm8k", 0), ("mmlu", 1), ("mbpp", 2)], seed=3)
    routing_services.snapshot_activate(snapshot=other)
    assert service.route(service.Request(query="What is 2 + 2?", endpoint="route")).snapshot.id == other.pk
    RouterSnapshot.objects.filter(pk=other.pk).delete()
    with pytest.raises(ServingError) as refused:
        service.route(service.Request(query="What is 2 + 2?", endpoint="route", snapshot_id=other.pk))
    assert refused.value.status == 404
    tables.forget()
