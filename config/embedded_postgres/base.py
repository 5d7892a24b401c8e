"""Django's PostgreSQL backend for the embedded server in DATA_DIR/pg, which the first connection starts.

So settings start nothing when imported. The first connection of a process (a request, a command, a Celery task)
starts the server unless it runs, creates the platform's database with pgvector unless it exists (about 0.1 s when
both are there), and keeps the server's socket folder. A later connection that fails because the server has gone
(stopped, or restarted in another socket folder) starts it again, once.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from django.db.backends.postgresql import base

from devtools import embedded_db

_hosts: dict[tuple[str, str], str] = {}  # (PGDATA, database) -> socket folder, per process
_lock = threading.Lock()


def server_host(pgdata: str, database: str, *, again: bool = False) -> str:
    """Return the socket folder of the server in ``pgdata``, starting it and creating ``database`` if needed."""
    key = (pgdata, database)
    with _lock:
        if again or key not in _hosts:
            host = embedded_db.ensure_running(Path(pgdata))
            embedded_db.ensure_database(host, database)
            _hosts[key] = host
        return _hosts[key]


class DatabaseWrapper(base.DatabaseWrapper):
    def _embedded(self) -> tuple[str, str]:
        embedded = self.settings_dict["EMBEDDED"]
        return str(embedded["PGDATA"]), str(embedded["DATABASE"])

    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        params["host"] = self.settings_dict["HOST"] = server_host(*self._embedded())
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        try:
            return super().get_new_connection(conn_params)
        except self.Database.OperationalError:
            pgdata, database = self._embedded()
            if embedded_db.is_running(Path(pgdata)):
                raise
            conn_params["host"] = self.settings_dict["HOST"] = server_host(pgdata, database, again=True)
            return super().get_new_connection(conn_params)
