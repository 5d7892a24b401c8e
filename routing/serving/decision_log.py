"""Write routing decisions after the response, in bulk, without ever failing or slowing the request.

``submit`` puts a finished ``RoutingDecision`` (unsaved) on a bounded in-memory queue and returns at once. A
daemon thread per process sleeps while rows gather (``AVENGERS_DECISION_LOG_FLUSH_S`` after the first, or until
``BATCH`` wait) and writes them with one PostgreSQL ``COPY``. Each row is encoded as a line of
COPY's text format by ``submit`` itself (20-50 µs), so that the writer only joins lines and sends
them: it holds the interpreter for microseconds, not for the milliseconds the ORM's ``bulk_create`` of a batch
took, which the worker's request thread had to wait through (docs/BENCHMARKS.md). When the database refuses a
batch, rows are retried one by one so that one bad row loses only itself; errors are logged and counted, never
raised. A full queue drops the new row (counted in ``stats()``), since the log must not hold up serving.

``AVENGERS_DECISION_LOG=inline`` writes each row in the calling thread instead (still never raising): for
tests inside one database transaction, and for a one-off command.
"""
from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import numbers
import queue
import re
import threading
from typing import Any, NamedTuple

from django.conf import settings
from django.db import close_old_connections, connection, models, transaction

from routing.models import RoutingDecision

_log = logging.getLogger(__name__)
BATCH = 500


class Line(NamedTuple):
    """One decision encoded as a line of COPY's text format."""

    request_id: str
    text: str


_queue: queue.Queue[Line] = queue.Queue(maxsize=10_000)
_lock = threading.Lock()
_thread: threading.Thread | None = None
_stats = {"submitted": 0, "written": 0, "dropped": 0, "failed": 0}
_pending = threading.Condition()
_hurry = threading.Event()  # write the gathered batch now: a whole batch waits, or someone flushes

# The columns COPY writes: every concrete field but the serial key, in the model's order.
_FIELDS = tuple(f for f in RoutingDecision._meta.concrete_fields if not f.primary_key)
_JSON = frozenset(f.attname for f in _FIELDS if isinstance(f, models.JSONField))
_COPY_SQL = "COPY {table} ({columns}) FROM STDIN".format(
    table=connection.ops.quote_name(RoutingDecision._meta.db_table),
    columns=", ".join(connection.ops.quote_name(f.column) for f in _FIELDS))


def submit(row: RoutingDecision) -> None:
    """Queue ``row`` to be written; never raises."""
    try:
        _stats["submitted"] += 1
        line = encode(row)
        if settings.DECISION_LOG_MODE == "inline":
            _write([line])
            return
        _ensure_thread()
        _queue.put_nowait(line)
        if _queue.qsize() >= BATCH:
            _hurry.set()
    except queue.Full:
        _stats["dropped"] += 1
        _log.warning("decision log queue full; dropped decision %s", row.request_id)
    except Exception:  # noqa: BLE001 - the log must never fail a request
        _stats["failed"] += 1
        _log.exception("could not queue decision %s", getattr(row, "request_id", "?"))


def stats() -> dict[str, int]:
    return {**_stats, "queued": _queue.qsize()}


def flush(timeout_s: float = 10.0) -> bool:
    """Wait until everything submitted so far is written (or failed); return False on timeout."""
    if _queue.unfinished_tasks:
        _hurry.set()
    with _pending:
        return _pending.wait_for(lambda: _queue.unfinished_tasks == 0, timeout=timeout_s)


def _ensure_thread() -> None:
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="decision-log", daemon=True)
            _thread.start()


def _run() -> None:
    while True:
        rows = [_queue.get()]  # idle: sleep until a decision comes
        try:
            # Then let the batch gather for FLUSH_S without waking for each row (which cost every request a
            # thread switch): ``submit`` wakes the writer early only once a whole batch waits, ``flush`` at once.
            if _queue.qsize() < BATCH - 1:
                _hurry.wait(settings.DECISION_LOG_FLUSH_S)
            _hurry.clear()
            while len(rows) < BATCH:
                try:
                    rows.append(_queue.get_nowait())
                except queue.Empty:
                    break
            _write(rows)
            if _queue.empty() and not settings.DATABASES["default"].get("CONN_MAX_AGE"):
                # Idle: give the connection back, as a request would (CONN_MAX_AGE=0), so none lingers.
                _reset_connection(False)
        finally:
            for _ in rows:
                _queue.task_done()
            with _pending:
                _pending.notify_all()


# COPY's text format: a backslash, newline, carriage return or tab inside a value is escaped; NUL, which
# PostgreSQL's text cannot hold, becomes U+FFFD so that such a query is still logged.
_ESCAPE = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\x00": "\ufffd"})


# In JSON text, the escape \u0000 (and not an escaped backslash followed by "u0000"); jsonb refuses it.
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def _field(value: Any, is_json: bool) -> str:
    if is_json:
        text = json.dumps(value)
        if "\\u0000" in text:
            text = _JSON_NUL.sub(r"\1\\ufffd", text)
        return text.translate(_ESCAPE)
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_ESCAPE)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, numbers.Integral):  # numpy's integers too
        return str(int(value))
    if isinstance(value, numbers.Real):  # repr(float()), not repr(): numpy 2 writes np.float64(0.5)
        return repr(float(value))
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"cannot log a {type(value).__name__} in a decision row")


def encode(row: RoutingDecision) -> Line:
    """Return ``row`` as a line of COPY's text format, one field per column of ``_FIELDS``."""
    fields = [_field(getattr(row, f.attname), f.attname in _JSON) for f in _FIELDS]
    return Line(row.request_id, "\t".join(fields) + "\n")


def _copy(lines: list[Line]) -> None:
    """Write ``lines`` with one COPY in one transaction (a savepoint inside a caller's transaction)."""
    with transaction.atomic(), connection.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
        copy.write("".join(line.text for line in lines))


def _write(rows: list[Line]) -> None:
    inline = connection.in_atomic_block  # inside a caller's transaction: savepoints keep it usable
    if not inline:
        close_old_connections()
    try:
        _copy(rows)
        _stats["written"] += len(rows)
        return
    except Exception:  # noqa: BLE001
        if len(rows) > 1:
            _log.exception("writing %d decisions in bulk failed; trying one by one", len(rows))
        _reset_connection(inline)
        if len(rows) == 1:
            _stats["failed"] += 1
            _log.error("could not write decision %s", rows[0].request_id, exc_info=True)
            return
    for row in rows:
        try:
            _copy([row])
            _stats["written"] += 1
        except Exception as exc:  # noqa: BLE001
            _stats["failed"] += 1
            _log.error("could not write decision %s: %s", row.request_id, exc)
            _reset_connection(inline)


def _reset_connection(inline: bool) -> None:
    """After a failure outside any caller's transaction, drop the connection in case it broke."""
    if inline:
        return
    try:
        connection.close()
    except Exception:  # noqa: BLE001
        pass


@atexit.register
def _drain_at_exit() -> None:
    # A worker that stops gracefully writes what it still holds (best effort, bounded).
    if _thread is not None and _thread.is_alive():
        flush(timeout_s=5.0)

