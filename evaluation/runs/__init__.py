"""Evaluation runs: create, cancel and resume them (services), execute them (lanes), recover them (sweep).

How a run moves:

1. ``evaluation_run_create`` validates the request, snapshots each model's parameters and templates,
   cuts the queries into batches per model and, once the transaction commits, queues one *lane* task
   per model.
2. A lane (``evaluation_lane_run``) holds a PostgreSQL advisory lock on its model, so all workers
   together never exceed the endpoint's ``max_concurrency``; it claims the model's pending batches
   (``SELECT ... FOR UPDATE SKIP LOCKED``), the next one before the last one drains.
3. For each batch it skips every sample already stored, answers seeded requests from the cache,
   asks the server for the rest from a pool of ``max_concurrency`` threads, grades each answer in
   that thread, and writes each response as soon as it arrives, so a worker or server that dies
   loses no finished work. The write is an upsert on (model, query, sample, params_key) that only
   replaces a failed row: a duplicate task writes nothing twice.
4. A batch whose requests still fail after the client's retries (the server is down, its circuit open)
   waits and is tried again, ``EVAL_MAX_DEFERRALS`` times, before its failures are recorded.
   The batch heartbeats while it works. ``evaluation_sweep`` (periodic) hands batches whose heartbeat
   stopped back to pending and queues lanes for them.
5. When no batch is pending or running, the run is done. ``evaluation_run_resume`` re-creates batches
   for what is missing or failed, and nothing else.

Modules: ``services`` (create, cancel, resume), ``lanes`` (a worker's lane: lock, claim, keep the slots
busy, defer), ``samples`` (plan a batch's requests, call, grade, write the rows), ``sweep``, ``api``, ``views``.
"""
