"""Hostile programs in every sandbox setup this machine can make: each is contained, or the sandbox refuses.

Each scenario runs the programs from another process (tests/support/sandbox_scenario.py), the way a
deployment would run the worker:

- root: root with CAP_SYS_ADMIN (the demo and CI): the `namespaces` tier;
- root-without-cap-sys-admin: root under ``capsh --drop=cap_sys_admin`` (the shipped Docker image): `bwrap`;
- user: the unprivileged user nobody (a developer's `make demo`): `bwrap`;
- root-without-cap-sys-admin-or-bwrap and user-without-bwrap: no confinement is possible, so it refuses.

Only root can make the other setups, so on a machine where the tests do not run as root they are skipped
(CI runs them as root).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from evaluation.core.sandbox import REFUSAL

REPO = Path(__file__).resolve().parents[3]
NOBODY = 65534


@dataclass(frozen=True)
class Scenario:
    uid: int
    drop_cap_sys_admin: bool
    no_bwrap: bool
    tier: str | None  # the tier it must get; None: it must refuse


SCENARIOS = {
    "root": Scenario(0, False, False, "namespaces"),
    "root-without-cap-sys-admin": Scenario(0, True, False, "bwrap"),
    "root-without-cap-sys-admin-or-bwrap": Scenario(0, True, True, None),
    "user": Scenario(NOBODY, False, False, "bwrap"),
    "user-without-bwrap": Scenario(NOBODY, False, True, None),
}

CONNECT_FROM_CHILD = """
import subprocess, sys
code = ("import socket; s = socket.create_connection(('127.0.0.1', __PORT__), timeout=3); s.sendall(b'leak'); "
        "print('CONNECTED')")
done = subprocess.run([sys.executable, '-S', '-c', code], capture_output=True, text=True)
print(done.stdout, done.stderr.strip().splitlines()[-1:])
"""
CONNECT_WITH_CTYPES = """
import ctypes, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
address = struct.pack('=H', socket.AF_INET) + struct.pack('!H', __PORT__) + socket.inet_aton('127.0.0.1') + bytes(8)
if libc.connect(fd, address, len(address)) == 0:
    print('CONNECTED')
else:
    print('connect failed, errno', ctypes.get_errno())
"""
CONNECT_TO_UNIX_SOCKETS = """
import subprocess, sys
code = '''
import socket
for address in (__PATH__, '\\\\0' + __ABSTRACT__):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(address)
        print('CONNECTED', repr(address))
    except OSError as exc:
        print('refused', repr(address), exc)
'''
done = subprocess.run([sys.executable, '-S', '-c', code], capture_output=True, text=True)
print(done.stdout, done.stderr.strip().splitlines()[-1:])
"""
READ_HOST_FILES = """
for path in (__READABLE__, __PRIVATE__):
    try:
        print('READ', open(path).read())
    except OSError as exc:
        print('refused', path, exc)
try:
    with open(__PRIVATE__, 'a') as f:
        f.write('APPENDED')
    print('APPENDED')
except OSError as exc:
    print('refused append', exc)
"""
FILL_TMP_AND_SHM = """
for path in (__TMP__, __SHM__):
    written = 0
    try:
        with open(path, 'wb') as f:
            while written < 64 << 20:
                f.write(b'x' * (1 << 20))
                written += 1 << 20
    except OSError as exc:
        print('stopped', path, exc)
    print('wrote', path, written)
"""
KILL_PROCESSES = """
import os, signal
for pid in (os.getppid(), {runner_pid}, __TARGET__):
    try:
        os.kill(pid, signal.SIGKILL)
        print('signalled', pid)
    except OSError as exc:
        print('refused', pid, exc)
"""
FORK_12_TIMES_300_MB = """
import os, time
children = []
for _ in range(12):
    pid = os.fork()
    if pid == 0:
        block = b'x' * (300 << 20)
        time.sleep(2)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
print('ALL HELD')
"""


@dataclass
class Run:
    scenario: Scenario
    caps: dict[str, Any]
    results: dict[str, dict[str, Any]]
    host: dict[str, Any] = field(default_factory=dict)

    def result(self, name: str) -> dict[str, Any] | None:
        """Return the program's result where the sandbox ran it; assert a clear refusal where it must refuse."""
        result = self.results[name]
        if self.scenario.tier is None:
            assert result["status"] == "refused", result
            assert REFUSAL in result["reason"]
            return None
        assert result["status"] not in ("error", "refused"), result
        return result


def python_for(scenario: Scenario) -> str | None:
    """Return an interpreter every user may run (bubblewrap's tiers need one; a Python under /root is not)."""
    if scenario.tier == "namespaces":
        return os.path.realpath(sys.executable)  # the supervisor binds it in as root
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        path, closed = candidate, False
        while path != "/":
            path = os.path.dirname(path)
            closed = closed or not os.stat(path).st_mode & stat.S_IXOTH
        if os.path.exists(candidate) and not closed:
            return candidate
    return None


def lines_starting(text: str, word: str) -> int:
    return sum(line.startswith(word) for line in text.splitlines())


def listener(family: int, address: Any) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(address)
    sock.listen(8)
    return sock


def never_connected(sock: socket.socket) -> bool:
    # A connection the kernel completed waits in the backlog, accepted or not.
    sock.settimeout(0.3)
    try:
        sock.accept()[0].close()
    except socket.timeout:
        return True
    return False


def run_scenario(scenario: Scenario, folder: Path, spec: dict[str, Any]) -> dict[str, Any]:
    python = python_for(scenario)
    if python is None:
        pytest.skip("no Python here that the unprivileged users may run")
    for name in ("sandbox.py", "sandbox_runner.py", "sandbox_supervisor.py"):
        shutil.copy(REPO / "evaluation" / "core" / name, folder / name)
    shutil.copy(REPO / "tests" / "support" / "sandbox_scenario.py", folder / "sandbox_scenario.py")
    command = [python, "-I", str(folder / "sandbox_scenario.py")]
    if scenario.drop_cap_sys_admin:
        command = [str(shutil.which("capsh")), "--drop=cap_sys_admin", "--", "-c", 'exec "$0" "$@"', *command]
    if scenario.uid != 0:
        command = [str(shutil.which("setpriv")), f"--reuid={scenario.uid}", f"--regid={scenario.uid}",
                   "--clear-groups", "--", *command]
    done = subprocess.run(command, input=json.dumps(spec), capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(folder)}, cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    output: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert output["uid"] == scenario.uid
    return output


@pytest.fixture(scope="module", params=list(SCENARIOS))
def run(request: pytest.FixtureRequest) -> Iterator[Run]:
    if os.geteuid() != 0:
        pytest.skip("only root can run the other users' and capabilities' setups")
    for tool in ("capsh", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing (Debian: libcap2-bin, util-linux)")
    scenario = SCENARIOS[request.param]
    folder = Path(tempfile.mkdtemp(prefix="avengers-hostile-"))
    folder.chmod(0o755)
    marker = uuid.uuid4().hex
    readable, private = folder / "readable.txt", folder / "private.txt"
    readable.write_text(f"WORLD-READABLE-{marker}")
    readable.chmod(0o644)
    private.write_text(f"PRIVATE-{marker}")
    private.chmod(0o600)
    os.chown(private, scenario.uid, scenario.uid)
    tcp_child, tcp_ctypes = listener(socket.AF_INET, ("127.0.0.1", 0)), listener(socket.AF_INET, ("127.0.0.1", 0))
    unix_path = folder / "service.sock"
    unix_named = listener(socket.AF_UNIX, str(unix_path))
    unix_path.chmod(0o777)
    abstract = f"avengers-hostile-{marker}"
    unix_abstract = listener(socket.AF_UNIX, "\0" + abstract)
    target = subprocess.Popen(["sleep", "600"], user=scenario.uid, group=scenario.uid, extra_groups=[])
    host = {"tcp_child": tcp_child, "tcp_ctypes": tcp_ctypes, "unix_named": unix_named,
            "unix_abstract": unix_abstract, "private": private, "marker": marker, "target": target,
            "tmp": Path(f"/tmp/avengers-hostile-{marker}"), "shm": Path(f"/dev/shm/avengers-hostile-{marker}")}
    programs = {
        "harmless": "print(sum(range(10)))\n",
        "connect_from_child": CONNECT_FROM_CHILD.replace("__PORT__", str(tcp_child.getsockname()[1])),
        "connect_with_ctypes": CONNECT_WITH_CTYPES.replace("__PORT__", str(tcp_ctypes.getsockname()[1])),
        "connect_to_unix_sockets": CONNECT_TO_UNIX_SOCKETS.replace("__PATH__", repr(str(unix_path)))
        .replace("__ABSTRACT__", repr(abstract)),
        "read_host_files": READ_HOST_FILES.replace("__READABLE__", repr(str(readable)))
        .replace("__PRIVATE__", repr(str(private))),
        "fill_tmp_and_shm": FILL_TMP_AND_SHM.replace("__TMP__", repr(str(host["tmp"])))
        .replace("__SHM__", repr(str(host["shm"]))),
        "kill_processes": KILL_PROCESSES.replace("__TARGET__", str(target.pid)),
        "fork_12_times_300_mb": FORK_12_TIMES_300_MB,
    }
    limits = {name: {"wall_s": 10, "memory_mb": 256} for name in programs}
    limits["fork_12_times_300_mb"] = {"cpu_s": 20, "wall_s": 20, "memory_mb": 512, "max_processes": 16}
    spec = {"programs": programs, "limits": limits, "no_bwrap": scenario.no_bwrap}
    try:
        output = run_scenario(scenario, folder, spec)
        yield Run(scenario, output["caps"], output["results"], host)
    finally:
        target.kill()
        target.wait()
        for sock in (tcp_child, tcp_ctypes, unix_named, unix_abstract):
            sock.close()
        for path in (host["tmp"], host["shm"]):
            path.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_each_setup_gets_its_strongest_tier_or_a_refusal(run: Run) -> None:
    assert run.caps["tier"] == run.scenario.tier, run.caps["detail"]
    if run.scenario.tier is None:
        assert run.caps["detail"].startswith(REFUSAL)
        assert "bubblewrap is not installed" in run.caps["detail"]
    else:
        assert run.caps["confines"] and run.caps["network_namespace"] and run.caps["pid_namespace"]
        assert run.caps["private_root"] and run.caps["memory_bound"] == "total"


def test_a_harmless_program_runs_where_the_sandbox_confines(run: Run) -> None:
    result = run.result("harmless")
    if result is not None:
        assert (result["status"], result["stdout"]) == ("passed", "45\n")


def test_a_child_interpreter_cannot_reach_the_network(run: Run) -> None:
    result = run.result("connect_from_child")
    assert never_connected(run.host["tcp_child"])
    if result is not None:
        assert result["status"] == "passed", result
        assert "CONNECTED" not in result["stdout"] and "Error" in result["stdout"]


def test_ctypes_cannot_reach_the_network(run: Run) -> None:
    result = run.result("connect_with_ctypes")
    assert never_connected(run.host["tcp_ctypes"])
    if result is not None:
        assert result["status"] == "passed", result
        assert "connect failed" in result["stdout"]


def test_unix_sockets_of_the_host_are_out_of_reach(run: Run) -> None:
    result = run.result("connect_to_unix_sockets")
    assert never_connected(run.host["unix_named"])
    assert never_connected(run.host["unix_abstract"])
    if result is not None:
        assert result["status"] == "passed", result
        assert "CONNECTED" not in result["stdout"] and lines_starting(result["stdout"], "refused") == 2


def test_host_files_are_out_of_reach_even_those_of_the_same_user(run: Run) -> None:
    result = run.result("read_host_files")
    assert run.host["private"].read_text() == f"PRIVATE-{run.host['marker']}"
    if result is not None:
        assert result["status"] == "passed", result
        assert run.host["marker"] not in result["stdout"] + result["stderr"]
        assert lines_starting(result["stdout"], "refused") == 3


def test_writes_to_tmp_and_dev_shm_never_reach_the_host(run: Run) -> None:
    result = run.result("fill_tmp_and_shm")
    assert not run.host["tmp"].exists()
    assert not run.host["shm"].exists()
    if result is not None:
        assert result["status"] == "passed", result
        assert lines_starting(result["stdout"], "wrote") == 2  # it wrote, to the sandbox's own tmpfs


def test_it_cannot_kill_its_parent_or_another_process_of_the_same_user(run: Run) -> None:
    result = run.result("kill_processes")
    assert run.host["target"].poll() is None  # the runner survived too: it reported every program
    if result is not None:
        assert result["status"] == "passed", result
        signalled = [line for line in result["stdout"].splitlines() if line.startswith("signalled")]
        assert signalled in ([], ["signalled 1"])  # bubblewrap's pid 1 is the supervisor: the kernel drops it
        assert lines_starting(result["stdout"], "refused") >= 2


def test_twelve_forks_of_300_mb_are_stopped_at_a_512_mb_limit(run: Run) -> None:
    result = run.result("fork_12_times_300_mb")
    if result is not None:
        assert result["status"] == "memory", result
        assert "512 MB" in result["reason"]
        assert "ALL HELD" not in result["stdout"]


def test_the_weak_tier_runs_only_when_allowed_and_says_it_does_not_confine() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("only root can run a program as another user")
    folder = Path(tempfile.mkdtemp(prefix="avengers-hostile-"))
    folder.chmod(0o755)
    try:
        spec = {"programs": {"harmless": "print('ran')\n"}, "no_bwrap": True, "allow_weak": True}
        output = run_scenario(Scenario(NOBODY, False, True, None), folder, spec)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert output["results"]["harmless"]["status"] == "passed"
    assert output["caps"]["tier"] in ("user-netns", "user")
    assert output["caps"]["confines"] is False
