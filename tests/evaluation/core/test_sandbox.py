"""The code sandbox: untrusted programs are stopped, graded, cleaned up, and kept off the network."""
from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from evaluation.core.sandbox import Limits, SandboxResult, capabilities, run_python

QUICK = Limits(cpu_s=2, wall_s=3, memory_mb=256, max_processes=16, max_file_mb=4)


def marked(code: str) -> tuple[str, str]:
    """Return a program that re-executes `code` with a unique marker in its command line."""
    marker = f"sandbox-test-{uuid.uuid4().hex}"
    source = f"import os, sys\nos.execv(sys.executable, [sys.executable, '-S', '-c', {code!r}, {marker!r}])\n"
    return source, marker


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry))
    return found


def assert_within(result: SandboxResult, limit_s: float) -> None:
    assert result.duration_s < 3 * limit_s + 2


@pytest.fixture
def server() -> Iterator[socket.socket]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield listener
    listener.close()


def assert_never_connected(listener: socket.socket) -> None:
    # A connection the kernel completed waits in the backlog, accepted or not.
    listener.settimeout(0.3)
    with pytest.raises(socket.timeout):
        listener.accept()


def test_it_passes_a_program_whose_asserts_hold() -> None:
    result = run_python("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('ok')\n", limits=QUICK)
    assert (result.status, result.passed, result.returncode, result.stdout) == ("passed", True, 0, "ok\n")


def test_it_fails_a_program_whose_assert_fails_and_says_which() -> None:
    result = run_python("x = 2\nassert x == 3, 'expected 3'\n", limits=QUICK)
    assert (result.status, result.passed, result.returncode) == ("failed", False, 1)
    assert "AssertionError: expected 3" in result.reason
    assert "line 2" in result.reason
    assert "AssertionError" in result.stderr


def test_it_fails_a_syntax_error() -> None:
    result = run_python("def broken(:\n    pass\n", limits=QUICK)
    assert result.status == "failed"
    assert "SyntaxError" in result.reason


def test_it_fails_without_raising_on_source_python_cannot_read() -> None:
    for source in ("print('a')\x00", "x = '\ud800'\n"):
        result = run_python(source, limits=QUICK)
        assert result.status == "failed"
        assert not result.passed


def test_it_refuses_nonsensical_limits() -> None:
    result = run_python("print(1)", limits=Limits(wall_s=0))
    assert result.status == "error"
    assert "wall_s" in result.reason


def test_it_blocks_connections_to_a_server_on_loopback(server: socket.socket) -> None:
    port = server.getsockname()[1]
    source = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')\n"
    result = run_python(source, limits=QUICK)
    assert result.status == "failed"
    assert "network" in result.reason or "unreachable" in result.reason
    assert_never_connected(server)


def test_a_child_interpreter_without_the_python_guard_still_cannot_connect(server: socket.socket) -> None:
    if not capabilities()["network_namespace"]:
        pytest.skip("no network namespace here: only the in-process guard blocks connections")
    port = server.getsockname()[1]
    connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
    source = f"import subprocess, sys\nsys.exit(subprocess.run([sys.executable, '-S', '-c', {connect!r}]).returncode)\n"
    result = run_python(source, limits=QUICK)
    assert result.status == "failed"
    assert "OSError" in result.stderr  # the child got as far as connect(), which the kernel refused
    assert_never_connected(server)


def test_it_stops_a_fork_bomb_and_leaves_no_process() -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    source, marker = marked(bomb)
    result = run_python(source, limits=Limits(cpu_s=2, wall_s=2, memory_mb=256, max_processes=8))
    assert result.status == "timeout"
    assert not result.passed
    assert_within(result, 2)
    assert processes_with(marker) == []


def test_it_limits_the_number_of_processes() -> None:
    spawn = ("import os, time\nn = 0\ntry:\n    for _ in range(40):\n        if os.fork() == 0:\n"
             "            time.sleep(60)\n            os._exit(0)\n        n += 1\nexcept OSError:\n"
             "    print('stopped at', n, flush=True)\n    raise SystemExit(1)\n")
    source, marker = marked(spawn)
    result = run_python(source, limits=Limits(cpu_s=2, wall_s=5, memory_mb=256, max_processes=8))
    assert result.status == "failed"
    stopped_at = int(result.stdout.split()[-1])
    assert stopped_at < 8
    assert processes_with(marker) == []


def test_it_kills_a_child_that_escaped_to_a_new_session() -> None:
    daemon = "print('daemon up', flush=True)\nimport time\ntime.sleep(600)\n"
    source, marker = marked(
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-S', '-c', {daemon!r}, sys.argv[1]])\n"
        "    os._exit(0)\n"
        "time.sleep(1)\n"
    )
    result = run_python(source, limits=QUICK)
    assert result.status == "passed"
    assert "daemon up" in result.stdout
    assert processes_with(marker) == []


def test_it_stops_a_program_that_allocates_without_end() -> None:
    result = run_python("chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 6))\n", limits=QUICK)
    assert result.status == "memory"
    assert not result.passed
    assert "256 MB" in result.reason
    assert_within(result, QUICK.wall_s)


def test_it_stops_a_program_that_sleeps_forever_at_the_wall_clock_limit() -> None:
    result = run_python("import time\ntime.sleep(600)\n", limits=QUICK)
    assert result.status == "timeout"
    assert "wall" in result.reason
    assert_within(result, QUICK.wall_s)


def test_it_stops_a_busy_loop_at_the_cpu_limit() -> None:
    result = run_python("while True:\n    pass\n", limits=Limits(cpu_s=1, wall_s=5, memory_mb=256))
    assert result.status == "timeout"
    assert "CPU" in result.reason
    assert_within(result, 5)


def test_it_bounds_the_output_of_a_program_that_prints_without_end() -> None:
    result = run_python("while True:\n    print('x' * 1000)\n", limits=Limits(wall_s=5, memory_mb=256, max_file_mb=1))
    assert result.status in ("failed", "timeout")
    assert len(result.stdout) < 70_000
    assert result.stdout.startswith("xxx")
    assert_within(result, 5)


def test_it_keeps_writes_inside_its_own_directory(tmp_path: Path) -> None:
    caps = capabilities()
    if not (caps["user_drop"] or caps["private_root"]):
        pytest.skip("without root the program runs as this user and can write wherever this user can")
    outside = tmp_path / "escaped.txt"
    in_etc = Path(f"/etc/avengers-sandbox-{uuid.uuid4().hex}")
    source = (
        "wrote = []\n"
        f"for path in ({str(outside)!r}, {str(in_etc)!r}):\n"
        "    try:\n"
        "        with open(path, 'w') as f:\n"
        "            f.write('escaped')\n"
        "        wrote.append(path)\n"
        "    except OSError as exc:\n"
        "        print('refused', path, type(exc).__name__)\n"
        "assert not wrote, wrote\n"
    )
    result = run_python(source, limits=QUICK)
    assert not outside.exists()
    assert not in_etc.exists()
    assert result.stdout.count("refused") == 2
    assert result.status == "passed"  # the program itself checked that both writes were refused


def test_it_lets_a_program_use_files_in_its_own_directory() -> None:
    source = ("import os, tempfile\nopen('data.txt', 'w').write('42')\nassert open('data.txt').read() == '42'\n"
              "with tempfile.NamedTemporaryFile() as f:\n    f.write(b'x')\nprint(sorted(os.listdir('.')))\n")
    result = run_python(source, limits=QUICK)
    assert result.status == "passed", result.stderr
    assert result.stdout == "['data.txt']\n"


def test_it_hides_the_parent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVENGERS_TEST_SECRET", "s3cr3t-do-not-leak")
    source = (
        "import os\nprint(dict(os.environ))\n"
        "try:\n"
        f"    print('environ-readable', open('/proc/{os.getpid()}/environ', 'rb').read())\n"
        "except OSError as exc:\n"
        "    print('environ-hidden', type(exc).__name__)\n"
    )
    result = run_python(source, limits=QUICK)
    assert result.status == "passed"
    assert "AVENGERS_TEST_SECRET" not in result.stdout
    assert "s3cr3t" not in result.stdout
    if capabilities()["tier"] != "user":  # same uid, same namespaces: /proc/<worker>/environ is readable
        assert "environ-hidden" in result.stdout


def test_it_runs_as_an_unprivileged_user_when_started_as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can drop to a sandbox uid")
    caps = capabilities()
    assert caps["user_drop"] is True
    first, last = caps["uid_range"]
    result = run_python("import os\nprint(os.getuid(), os.geteuid(), os.getgroups())\n", limits=QUICK)
    uid, euid, groups = result.stdout.split(maxsplit=2)
    assert first <= int(uid) <= last and uid == euid
    assert groups.strip() == "[]"


def test_capabilities_name_the_active_layers() -> None:
    caps = capabilities()  # without allow_weak: a confining tier, or None and the refusal in "detail"
    assert caps["tier"] in ("namespaces", "bwrap"), caps["detail"]
    assert caps["confines"] and caps["network_namespace"] and caps["pid_namespace"] and caps["private_root"]
    assert caps["memory_bound"] == "total" and caps["python_network_guard"] is True


def test_the_tests_pass_only_when_they_ran_to_their_end() -> None:
    done = run_python("def f():\n    return 1\n", tests="assert f() == 1\n", limits=QUICK)
    assert (done.status, done.passed, done.finished) == ("passed", True, True)
    cut = run_python("import os\ndef f():\n    return 2\nos._exit(0)\n", tests="assert f() == 1\n", limits=QUICK)
    assert (cut.status, cut.passed, cut.finished, cut.returncode) == ("failed", False, False, 0)
    assert "before its tests finished" in cut.reason


def test_several_sandboxes_run_concurrently_from_threads() -> None:
    def job(i: int) -> SandboxResult:
        return run_python(f"print({i})\nassert {i} % 3 != 0, 'multiple of three'\n", limits=QUICK)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(job, range(8)))
    for i, result in enumerate(results):
        assert result.stdout == f"{i}\n"
        assert result.status == ("failed" if i % 3 == 0 else "passed"), result.reason


def test_the_uid_sweep_ends_every_process_a_sandbox_uid_left_behind() -> None:
    """What a worker that died mid-run left running as its sandbox uid is killed before the uid is used again.
    (The sweep must start Python as root: the interpreter may live where other users cannot reach it.)"""
    import signal
    import subprocess
    import time

    from evaluation.core import sandbox

    if os.geteuid() != 0:
        pytest.skip("only root can start processes as another uid")
    uid = 64999  # no account, and outside the slots run_python holds, so no run is disturbed
    leftover = subprocess.Popen(["sleep", "60"], user=uid, group=uid, extra_groups=[])
    try:
        deadline = time.monotonic() + 10
        while sandbox._processes_of(uid) != [leftover.pid]:
            assert time.monotonic() < deadline, sandbox._processes_of(uid)
            time.sleep(0.02)
        sandbox._kill_uid(uid)
        assert leftover.wait(timeout=10) == -signal.SIGKILL
        assert sandbox._processes_of(uid) == []
    finally:
        if leftover.poll() is None:
            leftover.kill()
