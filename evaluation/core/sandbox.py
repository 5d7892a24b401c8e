"""Run untrusted Python in a throwaway process with limits, no network, no host files and no inherited secrets.

Pure Python (standard library only); the supervisor (`sandbox_supervisor.py`) and the program's runner
(`sandbox_runner.py`) are run from their source. Isolation is layered, and `capabilities()` says which
layers this machine allows:

1. Always: a separate process started from an explicit minimal environment, with rlimits on CPU
   time, address space, processes, file size, open files and core dumps, an audit hook that refuses
   socket connections, a wall-clock deadline, and every process it started killed afterwards.
2. Confinement, the first tier that works: as root with CAP_SYS_ADMIN, `namespaces` (new network,
   mount, PID, IPC and UTS namespaces set up by the supervisor, the program as a dedicated
   unprivileged uid); otherwise `bwrap`: bubblewrap with a user namespace and the same namespaces
   (as root, bubblewrap itself already runs as the dedicated uid). Either way the network has only
   loopback, the program sees a private root holding /usr, the Python installation, a few /dev nodes
   and size-limited tmpfs for /sandbox (its cwd), /tmp and /dev/shm, it cannot signal any process
   outside, and when it ends the kernel kills everything left in its PID namespace. The supervisor
   adds up the memory of all the run's processes and tmpfs files and stops the run above memory_mb.
3. Where neither works (no bubblewrap, no user namespaces), only weak tiers remain (`uid`, `user-netns`,
   `user`): the program can reach the network through a child interpreter or ctypes, read what the
   worker's user can read and signal its processes. `run_python` refuses to use them unless the caller
   passes `allow_weak=True` (the Django setting AVENGERS_SANDBOX_ALLOW_WEAK).
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import pwd
import random
import re
import resource
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

REFUSAL = ("the sandbox cannot confine code here: install bubblewrap or set AVENGERS_SANDBOX_ALLOW_WEAK=1, "
           "see docs/GRADING.md")
# Dedicated uids, one per concurrent run. Debian leaves 60000-64999 to packages that ask for one,
# and systemd's DynamicUser range starts at 61184; slots whose uid has an account are skipped.
SANDBOX_UID_BASE = 60100
SANDBOX_UID_SLOTS = 64
MAX_OUTPUT_BYTES = 64 * 1024  # per stream: the first and last half are kept
MAX_OPEN_FILES = 256
_SUPERVISOR_GRACE_S = 5.0  # beyond wall_s, before the caller kills the supervisor itself
_SLOT_WAIT_S = 60.0
_BWRAP_SEARCH_PATH = "/usr/bin:/bin:/usr/local/bin"
_HERE = os.path.dirname(os.path.abspath(__file__))

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_FULL_NAMESPACES = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWUTS


@dataclass(frozen=True)
class Limits:
    cpu_s: float = 10.0
    wall_s: float = 15.0
    memory_mb: int = 512  # all the run's processes and files in /sandbox, /tmp and /dev/shm together
    max_processes: int = 16
    max_file_mb: int = 16


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "passed" | "failed" | "timeout" | "memory" | "error" | "refused"
    passed: bool  # True only when status == "passed": exit status 0 within limits (and the tests finished)
    returncode: int | None  # exit code, or minus the signal number that killed it
    stdout: str  # at most MAX_OUTPUT_BYTES of it (the start and the end)
    stderr: str
    duration_s: float
    reason: str  # why, in words a person can act on
    finished: bool = False  # the runner proved that the program (and its tests) ran to their last line


@dataclass(frozen=True)
class _Tier:
    name: str
    unshare: int  # clone flags for the supervisor; with _CLONE_NEWNS it also builds a private root
    drop_user: bool
    bwrap: bool = False
    confines: bool = True  # False: a weak tier, used only when the caller allows it

    @property
    def pid_ns(self) -> bool:
        return self.bwrap or bool(self.unshare & _CLONE_NEWPID)

    @property
    def private_root(self) -> bool:
        return self.bwrap or bool(self.unshare & _CLONE_NEWNS)


_ROOT_TIERS = (_Tier("namespaces", _FULL_NAMESPACES, True), _Tier("bwrap", 0, True, bwrap=True),
               _Tier("uid", 0, True, confines=False))
_USER_TIERS = (_Tier("bwrap", 0, False, bwrap=True),
               _Tier("user-netns", _CLONE_NEWUSER | _CLONE_NEWNET, False, confines=False),
               _Tier("user", 0, False, confines=False))

_KILL_UID = r'''
import os, signal, sys
uid = int(sys.argv[1])
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
os.kill(-1, signal.SIGKILL)
'''

_tiers_lock = threading.Lock()
_tiers: dict[bool, tuple[_Tier, dict[str, Any]]] = {}  # allow_weak -> the tier that worked


def capabilities(*, allow_weak: bool = False) -> dict[str, Any]:
    """Say which isolation layers `run_python` uses on this machine (probed until one works)."""
    _, caps = _select_tier(allow_weak)
    return dict(caps)


def run_python(source: str, *, limits: Limits = Limits(), tests: str | None = None,
               allow_weak: bool = False) -> SandboxResult:
    """Run `source` as a script in the sandbox, then `tests` if given, and grade how it ended; never raise.

    With `tests`, it passes only if the tests ran to their end: exiting early, with any status, fails.
    """
    started = time.monotonic()
    try:
        problem = _check_limits(limits)
        if problem:
            return _error(problem, started)
        tier, caps = _select_tier(allow_weak)
        if tier is None:
            return _error(str(caps["detail"]), started, status="refused")
        return _execute(source, tests, limits, tier)
    except Exception as exc:  # a failure of the sandbox itself must not take the worker down
        return _error(f"the sandbox failed: {type(exc).__name__}: {exc}", started)


def _check_limits(limits: Limits) -> str:
    if not (limits.cpu_s > 0 and limits.wall_s > 0):
        return "limits: cpu_s and wall_s must be positive"
    if limits.memory_mb < 32 or limits.max_processes < 1 or limits.max_file_mb < 1:
        return "limits: memory_mb must be at least 32, max_processes and max_file_mb at least 1"
    return ""


def _error(reason: str, started: float, status: str = "error") -> SandboxResult:
    return SandboxResult(status=status, passed=False, returncode=None, stdout="", stderr="",
                         duration_s=time.monotonic() - started, reason=reason)


def _select_tier(allow_weak: bool) -> tuple[_Tier | None, dict[str, Any]]:
    with _tiers_lock:
        found = _tiers.get(allow_weak) or _tiers.get(False)  # a confining tier serves both
        if found is not None:
            return found
        tier, caps = _probe(allow_weak)
        if tier is not None:  # a failed probe is retried on the next call rather than remembered
            _tiers[allow_weak] = (tier, caps)
            if tier.confines:
                _tiers[False] = (tier, caps)
        return tier, caps


def _probe(allow_weak: bool) -> tuple[_Tier | None, dict[str, Any]]:
    """Try the strongest isolation first and keep the first that runs a trivial program."""
    as_root = os.geteuid() == 0
    failures = []
    chosen = None
    for tier in _ROOT_TIERS if as_root else _USER_TIERS:
        if not (tier.confines or allow_weak):
            continue
        problem = _bwrap_problem(as_root) if tier.bwrap else ""
        if problem:
            failures.append(f"{tier.name}: {problem}")
            continue
        result = _execute("import os\nprint('ok', os.getuid())\n", None, Limits(cpu_s=5, wall_s=10), tier)
        if result.passed and result.stdout.startswith("ok"):
            chosen = tier
            break
        failures.append(f"{tier.name}: {result.reason} {result.stderr.strip()[-300:]}".strip())
    if chosen is None and not allow_weak:
        detail = f"{REFUSAL} ({'; '.join(failures)})"
    elif chosen is None and as_root:
        detail = ("refusing to run untrusted code as root: no unprivileged sandbox user could be used ("
                  + "; ".join(failures) + ")")
    elif chosen is None:
        detail = "no sandbox tier works here: " + "; ".join(failures)
    else:
        detail = "; ".join(failures)
    caps: dict[str, Any] = {
        "tier": chosen.name if chosen else None,
        "confines": bool(chosen and chosen.confines),
        "allow_weak": allow_weak,
        "runs_as_root": as_root,
        "user_drop": bool(chosen and chosen.drop_user),
        "network_namespace": bool(chosen and (chosen.bwrap or chosen.unshare & _CLONE_NEWNET)),
        "pid_namespace": bool(chosen and chosen.pid_ns),
        "private_root": bool(chosen and chosen.private_root),
        # "total": the supervisor stops the run when all its processes and tmpfs files together pass
        # memory_mb; "per-process": only RLIMIT_AS, so up to memory_mb x max_processes in all.
        "memory_bound": "total" if chosen and chosen.pid_ns else "per-process",
        "python_network_guard": True,
        "uid_range": [SANDBOX_UID_BASE, SANDBOX_UID_BASE + SANDBOX_UID_SLOTS - 1] if as_root else None,
        "detail": detail,
    }
    return chosen, caps


def _bwrap_problem(as_root: bool) -> str:
    """Say why bubblewrap cannot be used here, or return "" when it may."""
    if _find_bwrap() is None:
        return "bubblewrap is not installed (Debian: apt-get install bubblewrap)"
    if as_root:
        for path in _python_dirs(os.path.realpath(sys.executable)):
            blocked = _closed_to_others(path)
            if blocked:
                return (f"the sandbox uid cannot reach the Python installation: {blocked} is closed to other "
                        "users (install Python where every user may read it, e.g. /usr/local)")
    return ""


def _find_bwrap() -> str | None:
    return shutil.which("bwrap", path=_BWRAP_SEARCH_PATH)


def _closed_to_others(path: str) -> str:
    """Return the first directory on `path` that other users may not pass through, or ""."""
    current = ""
    for part in path.strip("/").split("/"):
        current += "/" + part
        mode = os.stat(current).st_mode
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return current
    return ""


def _python_dirs(python: str) -> list[str]:
    return sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(python))})


@functools.cache
def _source(name: str) -> str:
    with open(os.path.join(_HERE, name), encoding="utf-8") as f:
        return f.read()


def _execute(source: str, tests: str | None, limits: Limits, tier: _Tier) -> SandboxResult:
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        uid = None
        if tier.drop_user:
            uid = stack.enter_context(_uid_slot(_SLOT_WAIT_S))
            if uid is None:
                return _error(f"all {SANDBOX_UID_SLOTS} sandbox uids stayed busy for {_SLOT_WAIT_S:g} s", started)
        base = tempfile.mkdtemp(prefix="avengers-sandbox-")
        stack.callback(_remove_tree, base)
        os.chmod(base, 0o711)  # the sandbox uid may pass through to work/, but not list or read
        work = os.path.join(base, "work")
        os.mkdir(work, 0o700)
        if uid is not None and not tier.private_root:
            os.chown(work, uid, uid)
        # The runner reads the program, its tests and the secret that proves they finished from stdin.
        secret = secrets.token_hex(16)
        payload = json.dumps({"program": source, "tests": tests, "secret": secret}).encode("utf-8", "surrogatepass")
        payload_path = os.path.join(base, "payload")
        with open(os.open(payload_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(payload)
        payload_file = stack.enter_context(open(payload_path, "rb"))
        out_file = stack.enter_context(open(os.path.join(base, "stdout"), "wb"))
        err_file = stack.enter_context(open(os.path.join(base, "stderr"), "wb"))
        report_fd = os.open(os.path.join(base, "report"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        stack.callback(os.close, report_fd)

        python = os.path.realpath(sys.executable)
        home = "/sandbox" if tier.private_root else work
        tmpfs_mb = 2 * limits.max_file_mb + 16
        python_dirs = _python_dirs(python)
        config = {
            "report_fd": report_fd, "root": work, "uid": None if tier.bwrap else uid,
            "unshare": tier.unshare, "inside_bwrap": tier.bwrap, "pid_ns": tier.pid_ns,
            "python": python, "runner": _source("sandbox_runner.py"), "wall_s": limits.wall_s,
            "python_dirs": python_dirs, "tmpfs_mb": tmpfs_mb,
            "rlimits": _rlimits(limits, tier), "memory_total": limits.memory_mb * 1024 * 1024,
        }
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": home, "TMPDIR": "/tmp" if tier.private_root else work,
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "PYTHONSAFEPATH": "1",
            "PYTHONNOUSERSITE": "1", "PYTHONUTF8": "1", "AVENGERS_SANDBOX": "1",
        }
        supervisor = [python, "-I", "-S", "-c", _source("sandbox_supervisor.py"), json.dumps(config)]
        user: dict[str, Any] = {}
        if tier.bwrap:
            command = _bwrap_command(str(_find_bwrap()), python_dirs, tmpfs_mb) + supervisor
            if uid is not None:  # bubblewrap itself runs as the sandbox uid, so nothing inside is root
                user = {"user": uid, "group": uid, "extra_groups": []}
        else:
            command = supervisor
        try:
            proc = subprocess.Popen(
                command, stdin=payload_file, stdout=out_file, stderr=err_file, pass_fds=(report_fd,),
                cwd="/" if tier.bwrap else work, env=env, start_new_session=True, close_fds=True, **user)
        except OSError as exc:
            return _error(f"could not start the sandbox: {exc}", started)
        exited = _wait_for_exit(proc.pid, limits.wall_s + _SUPERVISOR_GRACE_S)
        # The supervisor is not reaped yet, so its pid (and process group id) cannot be reused.
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        report = _read_report(os.path.join(base, "report"))
        if not exited and not tier.pid_ns and "child" in report:
            with contextlib.suppress(OSError):
                os.killpg(int(report["child"]), signal.SIGKILL)
        if uid is not None:
            _kill_uid(uid)
        out_file.flush()
        err_file.flush()
        stdout = _read_bounded(os.path.join(base, "stdout"))
        stderr = _read_bounded(os.path.join(base, "stderr"))
        return _grade(report, stdout, stderr, limits, supervisor_killed=not exited,
                      duration_s=time.monotonic() - started, secret=secret, with_tests=tests is not None)
    raise AssertionError("unreachable")  # pragma: no cover  (keeps mypy's return check happy)


def _bwrap_command(bwrap: str, python_dirs: list[str], tmpfs_mb: int) -> list[str]:
    """Return bubblewrap's arguments: every namespace, a read-only /usr and Python, tmpfs for the rest."""
    args = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--as-pid-1", "--hostname", "sandbox"]
    bound: list[str] = []
    for name in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
            bound.append(path)
    for path in python_dirs:
        if not any(path == b or path.startswith(b + "/") for b in bound):
            args += ["--ro-bind", path, path]
    args += ["--dev", "/dev", "--proc", "/proc"]
    for path in ("/sandbox", "/tmp", "/dev/shm"):
        args += ["--size", str(tmpfs_mb * 1024 * 1024), "--tmpfs", path]
    return args + ["--chdir", "/sandbox", "--remount-ro", "/", "--"]


def _rlimits(limits: Limits, tier: _Tier) -> list[tuple[int, tuple[int, int]]]:
    cpu = max(1, int(-(-limits.cpu_s // 1)))  # whole seconds, rounded up
    processes = limits.max_processes
    if tier.bwrap:
        processes += 1  # the count is per user namespace, and the supervisor is in the sandbox's
    elif not tier.drop_user:
        # Without a uid of its own the limit counts every process of this user, so leave room.
        processes += len(_processes_of(os.getuid()))
    memory = limits.memory_mb * 1024 * 1024
    file_size = limits.max_file_mb * 1024 * 1024
    return [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),  # SIGXCPU at the soft limit, SIGKILL a second later
        (resource.RLIMIT_AS, (memory, memory)),
        (resource.RLIMIT_NPROC, (processes, processes)),
        (resource.RLIMIT_FSIZE, (file_size, file_size)),
        (resource.RLIMIT_NOFILE, (MAX_OPEN_FILES, MAX_OPEN_FILES)),
        (resource.RLIMIT_CORE, (0, 0)),
    ]


def _wait_for_exit(pid: int, timeout_s: float) -> bool:
    """Wait until `pid` has exited, without reaping it; return False on timeout."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            return bool(poller.poll(max(0, int(timeout_s * 1000))))
        finally:
            os.close(pidfd)
    deadline = time.monotonic() + timeout_s
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


@contextlib.contextmanager
def _uid_slot(wait_s: float) -> Iterator[int | None]:
    """Hold one dedicated sandbox uid for the run; flock makes it exclusive across processes."""
    lock_dir = os.path.join(tempfile.gettempdir(), "avengers-sandbox-uids")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for slot in random.sample(range(SANDBOX_UID_SLOTS), SANDBOX_UID_SLOTS):
            uid = SANDBOX_UID_BASE + slot
            if _has_account(uid):
                continue
            fd = os.open(os.path.join(lock_dir, str(uid)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            try:
                _kill_uid(uid)  # leftovers of a worker that died mid-run
                yield uid
            finally:
                os.close(fd)
            return
        if time.monotonic() >= deadline:
            yield None
            return
        time.sleep(0.05)


_account_cache: dict[int, bool] = {}


def _has_account(uid: int) -> bool:
    if uid not in _account_cache:
        try:
            pwd.getpwuid(uid)
            _account_cache[uid] = True
        except KeyError:
            _account_cache[uid] = False
    return _account_cache[uid]


def _processes_of(uid: int) -> list[int]:
    """Return the live (not zombie) processes whose real uid is `uid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = f.read()
        except OSError:
            continue
        state = re.search(r"^State:\s+(\S)", status, re.M)
        real = re.search(r"^Uid:\s+(\d+)", status, re.M)
        if real and int(real.group(1)) == uid and not (state and state.group(1) == "Z"):
            found.append(int(entry))
    return found


def _kill_uid(uid: int) -> None:
    """Kill every process of a sandbox uid: kill(-1) as that uid is atomic against forks."""
    for _ in range(10):
        if not _processes_of(uid):
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([os.path.realpath(sys.executable), "-I", "-S", "-c", _KILL_UID, str(uid)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={}, cwd="/", timeout=10, check=False)
        time.sleep(0.01)


def _read_report(path: str) -> dict[str, Any]:
    report: dict[str, Any] = {}
    with open(path, "rb") as f:
        for line in f.read(1024 * 1024).splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict):
                    for key, value in item.items():
                        report.setdefault(key, value)  # the first error is the cause
    return report


def _read_bounded(path: str) -> str:
    """Read a captured stream, keeping its start and end when it is longer than the cap."""
    half = MAX_OUTPUT_BYTES // 2
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= MAX_OUTPUT_BYTES:
            data = f.read(MAX_OUTPUT_BYTES)
        else:
            head = f.read(half)
            f.seek(size - half)
            data = head + f"\n[... {size - 2 * half} bytes left out ...]\n".encode() + f.read(half)
    return data.decode("utf-8", "replace")


def _grade(report: dict[str, Any], stdout: str, stderr: str, limits: Limits, *, supervisor_killed: bool,
           duration_s: float, secret: str, with_tests: bool) -> SandboxResult:
    end = report.get("end")
    finished = isinstance(end, dict) and secret in str(end.get("proof", ""))

    def result(status: str, reason: str, returncode: int | None) -> SandboxResult:
        return SandboxResult(status=status, passed=status == "passed", returncode=returncode, stdout=stdout,
                             stderr=stderr, duration_s=duration_s, reason=reason, finished=finished)

    wall = f"ran longer than its {limits.wall_s:g} s wall-clock limit (wall_s) and was stopped"
    if "error" in report:
        return result("error", str(report["error"]), None)
    if not isinstance(end, dict):
        if supervisor_killed:
            return result("timeout", wall, None)
        return result("error", "the sandbox supervisor ended without reporting how the program ended", None)
    exit_code, sig = end.get("exit"), end.get("signal")
    returncode = exit_code if exit_code is not None else -int(sig or 0)
    duration_s = float(end.get("elapsed_s", duration_s))
    last = _last_line(stderr)
    memory = f"ran out of memory at its {limits.memory_mb} MB limit (memory_mb)"
    if end.get("memory_exceeded"):
        return result("memory", f"{memory}: its processes and files together held more and it was stopped", returncode)
    if end.get("timed_out") or supervisor_killed:
        return result("timeout", wall, returncode)
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and end.get("cpu_s", 0) >= limits.cpu_s):
        return result("timeout", f"used more than its {limits.cpu_s:g} s CPU-time limit (cpu_s)", returncode)
    if exit_code == 0 and with_tests and not finished:
        return result("failed", "the program ended (exit status 0) before its tests finished: the tests did not "
                                "all run (sys.exit, os._exit, or the runner's proof fd closed)", 0)
    if exit_code == 0:
        return result("passed", "exited with status 0" + (" after every test ran" if with_tests else ""), 0)
    near_limit = end.get("maxrss_kb", 0) * 1024 >= 0.8 * limits.memory_mb * 1024 * 1024
    if last.startswith("MemoryError") or "Cannot allocate memory" in last or (
            sig in (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS) and near_limit):
        return result("memory", memory + (f": {last}" if last else ""), returncode)
    if sig == signal.SIGXFSZ or "[Errno 27] File too large" in stderr:
        return result("failed", f"wrote more than its {limits.max_file_mb} MB file-size limit "
                                "(max_file_mb) to a file or to its output", returncode)
    if sig is not None:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return result("failed", f"killed by signal {name}" + (f" after: {last}" if last else ""), returncode)
    if last:
        return result("failed", last + _where(stderr), returncode)
    return result("failed", f"exited with status {exit_code}", returncode)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def _where(stderr: str) -> str:
    """Point at the last line of the program that the traceback went through."""
    matches = re.findall(r'File "(solution|tests)\.py", line (\d+)[^\n]*\n(?:[ \t]+(\S[^\n]*))?', stderr)
    if not matches:
        return ""
    name, line, code = matches[-1]
    return f" ({name}.py line {line}" + (f": {code.strip()[:200]})" if code else ")")


def _remove_tree(path: str) -> None:
    def make_writable(func: Any, failed: str, exc_info: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed), 0o700)
            os.chmod(failed, 0o700)
            func(failed)

    shutil.rmtree(path, onerror=make_writable)
    if os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)
