"""Embedding jobs: store a vector for every query that has none under an embedder, resumably."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from numpy.typing import NDArray

from avengers_web.service_errors import ServiceError
from avengers_web.services import User, owner_of
from evaluation.models import Dataset, Query, QueryEmbedding
from routing.core.embedding import EMBEDDERS, CachedEmbedder, Embedder, EmbeddingCache, get_embedder
from routing.models import EmbeddingJob
from routing.tasks import embedding_job_run as embedding_job_run_task

EmbedderFactory = Callable[[str], Embedder]
EMBED_BATCH = 256


def default_embedder(name: str) -> Embedder:
    """Return the named embedder behind the on-disk cache shared with `python -m routing.offline`."""
    cache = settings.EMBEDDING_CACHE_PATH
    cache.parent.mkdir(parents=True, exist_ok=True)
    return CachedEmbedder(get_embedder(name), EmbeddingCache(cache))


def check_embedder(name: str) -> None:
    """Raise ServiceError unless ``name`` is a registered embedder."""
    if name not in EMBEDDERS:
        raise ServiceError("embedder", f"unknown embedder {name!r}; use one of {', '.join(sorted(EMBEDDERS))}")


def embed_missing(*, query_ids: Sequence[int], embedder_name: str, embedder: Embedder,
                  progress: Callable[[int, int], None] | None = None) -> int:
    """Store a vector for each query that has none under this embedder; return how many were computed."""
    have = set(QueryEmbedding.objects.filter(query_id__in=list(query_ids), embedder=embedder_name)
               .values_list("query_id", flat=True))
    missing = [q for q in query_ids if q not in have]
    done = 0
    for start in range(0, len(missing), EMBED_BATCH):
        chunk = missing[start:start + EMBED_BATCH]
        texts = dict(Query.objects.filter(id__in=chunk).values_list("id", "text"))
        vectors = embedder.embed([texts[q] for q in chunk])
        # Each batch is committed on its own: a job that dies keeps what it embedded and resumes after it.
        QueryEmbedding.objects.bulk_create(
            [QueryEmbedding(query_id=q, embedder=embedder_name, dimensions=int(v.shape[0]), vector=v)
             for q, v in zip(chunk, vectors)],
            ignore_conflicts=True,
        )
        done += len(chunk)
        if progress is not None:
            progress(done, len(missing))
    return done


def embedding_job_create(*, datasets: Sequence[Dataset], embedder: str | None = None, user: User = None,
                         queue: bool = True) -> EmbeddingJob:
    """Queue a job that embeds the datasets' queries that have no vector under ``embedder`` (default
    AVENGERS_EMBEDDER)."""
    embedder = embedder or settings.EMBEDDER
    check_embedder(embedder)
    if not datasets:
        raise ServiceError("datasets", "choose at least one dataset")
    with transaction.atomic():
        job = EmbeddingJob.objects.create(embedder=embedder, created_by=owner_of(user))
        job.datasets.set(datasets)
        if queue:
            transaction.on_commit(partial(embedding_job_run_task.delay, job.pk))
    return job


def embedding_job_run(*, job_id: int, embedder_factory: EmbedderFactory = default_embedder) -> None:
    """Claim the job and embed what is missing, reporting progress; a re-run does only what is left."""
    stale = timezone.now() - timezone.timedelta(minutes=10)
    claimed = EmbeddingJob.objects.filter(pk=job_id).filter(
        Q(status=EmbeddingJob.Status.PENDING) | Q(status=EmbeddingJob.Status.RUNNING, heartbeat_at__lt=stale)
    ).update(status=EmbeddingJob.Status.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now())
    if claimed != 1:
        return
    job = EmbeddingJob.objects.get(pk=job_id)
    query_ids = list(Query.objects.filter(dataset__in=job.datasets.all()).order_by("id").values_list("id", flat=True))

    def progress(done: int, total: int) -> None:
        EmbeddingJob.objects.filter(pk=job_id).update(done=done, total=total, heartbeat_at=timezone.now())

    try:
        computed = embed_missing(query_ids=query_ids, embedder_name=job.embedder,
                                 embedder=embedder_factory(job.embedder), progress=progress)
    except Exception as exc:
        EmbeddingJob.objects.filter(pk=job_id).update(status=EmbeddingJob.Status.FAILED, message=str(exc)[:2000],
                                                      finished_at=timezone.now())
        raise
    EmbeddingJob.objects.filter(pk=job_id).update(
        status=EmbeddingJob.Status.DONE, finished_at=timezone.now(),
        message=f"{computed} queries embedded; {len(query_ids) - computed} already had a vector")


def embeddings_of(query_ids: Sequence[int], embedder_name: str) -> NDArray[np.float32]:
    """Return the stored vectors of these queries, in this order."""
    rows = dict(QueryEmbedding.objects.filter(query_id__in=list(query_ids), embedder=embedder_name)
                .values_list("query_id", "vector"))
    missing = [q for q in query_ids if q not in rows]
    if missing:
        raise ServiceError("embedder", f"{len(missing)} queries have no {embedder_name} vector yet")
    return np.asarray([rows[q] for q in query_ids], dtype=np.float32).reshape(len(query_ids), -1)
