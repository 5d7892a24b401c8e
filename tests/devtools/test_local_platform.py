"""What `make demo` and `make run` give the processes they start: DEBUG off and a secret key kept on disk."""
from __future__ import annotations

from pathlib import Path

from devtools import local_platform


def test_the_secret_key_is_made_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "secret_key"
    assert local_platform.ensure_secret_key(path) == path
    key = path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600 and len(key.strip()) >= 50
    local_platform.ensure_secret_key(path)
    assert path.read_text() == key
    assert local_platform.ensure_secret_key(tmp_path / "other") != path
    assert (tmp_path / "other").read_text() != key


def test_the_processes_run_with_debug_off_and_the_kept_key_unless_one_is_given(tmp_path: Path) -> None:
    env = local_platform.environment(tmp_path, {"DEBUG": "true", "PATH": "/usr/bin"})
    assert env["DEBUG"] == "false" and env["AVENGERS_DATA_DIR"] == str(tmp_path)
    assert env["SECRET_KEY_FILE"] == str(tmp_path / "secret_key") and "SECRET_KEY" not in env
    assert Path(env["PROMETHEUS_MULTIPROC_DIR"]).is_dir() and env["DB_CONN_MAX_AGE"] == "60"

    given = local_platform.environment(tmp_path / "b", {"SECRET_KEY": "from-the-operator"})
    assert given["SECRET_KEY"] == "from-the-operator" and "SECRET_KEY_FILE" not in given
    assert not (tmp_path / "b" / "secret_key").exists()


def test_the_web_server_is_gunicorn_with_threads_and_the_metrics_hooks() -> None:
    command = local_platform.gunicorn_command(host="127.0.0.1", port=8123, workers=2, threads=4)
    assert command[1:4] == ["-m", "gunicorn", "config.wsgi:application"]
    assert Path(command[command.index("--config") + 1]).is_file()
    assert command[command.index("--bind") + 1] == "127.0.0.1:8123"
    assert command[command.index("--worker-class") + 1] == "gthread"
