"""Run untrusted Python in a throwaway process with limits, no network and no inherited secrets.

Pure Python (standard library only). Isolation is layered, and `capabilities()` says which layers
this machine allows:

1. Always: a separate process started from an explicit minimal environment, with rlimits on CPU
   time, address space, processes, file size, open files and core dumps, an audit hook that refuses
   socket connections, a wall-clock deadline, and every process it started killed afterwards.
2. As root: the program runs as a dedicated unprivileged uid (one per concurrent run), so the
   process limit is enforced and it cannot write outside its own directory.
3. As root with CAP_SYS_ADMIN: new network, mount, PID, IPC and UTS namespaces. The network has
   only a loopback interface that is down; the program sees a private root holding /usr, the Python
   installation, a few /dev nodes and a size-limited tmpfs for /sandbox (its cwd) and /tmp; when it
   ends, the kernel kills everything left in its PID namespace.

Without root, the uid and namespace layers are unavailable (a user namespace is tried for the
network); as root without a usable unprivileged uid, `run_python` refuses to run anything.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import random
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

STATUSES = ("passed", "failed", "timeout", "memory", "error")
# Dedicated uids, one per concurrent run. Debian leaves 60000-64999 to packages that ask for one,
# and systemd's DynamicUser range starts at 61184; slots whose uid has an account are skipped.
SANDBOX_UID_BASE = 60100
SANDBOX_UID_SLOTS = 64
MAX_OUTPUT_BYTES = 64 * 1024  # per stream: the first and last half are kept
MAX_OPEN_FILES = 256
_SUPERVISOR_GRACE_S = 5.0  # beyond wall_s, before the caller kills the supervisor itself
_SLOT_WAIT_S = 60.0

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
    memory_mb: int = 512
    max_processes: int = 16
    max_file_mb: int = 16


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "passed" | "failed" | "timeout" | "memory" | "error"
    passed: bool  # True only when status == "passed" (exit code 0 within limits)
    returncode: int | None  # exit code, or minus the signal number that killed it
    stdout: str  # at most MAX_OUTPUT_BYTES of it (the start and the end)
    stderr: str
    duration_s: float
    reason: str  # why, in words a person can act on


@dataclass(frozen=True)
class _Tier:
    name: str
    unshare: int  # clone flags for the supervisor; with _CLONE_NEWNS it also builds a private root
    drop_user: bool

    @property
    def private_root(self) -> bool:
        return bool(self.unshare & _CLONE_NEWNS)


_ROOT_TIERS = (_Tier("namespaces", _FULL_NAMESPACES, True), _Tier("uid", 0, True))
_USER_TIERS = (_Tier("user-netns", _CLONE_NEWUSER | _CLONE_NEWNET, False), _Tier("user", 0, False))

# The supervisor, run as `python -I -S -c _BOOTSTRAP CONFIG`. It enters the namespaces, forks an
# init process (pid 1 of the new PID namespace, when there is one), which forks the program's
# process: rlimits, drop to the sandbox uid, exec the runner. The init process enforces the
# wall-clock deadline, kills everything that is left, and reports as JSON lines on an inherited fd.
_BOOTSTRAP = r'''
import ctypes, json, os, resource, signal, sys, time
cfg = json.loads(sys.argv[1])
REPORT = cfg["report_fd"]
ROOT = cfg["root"]
UID = cfg["uid"]
FLAGS = cfg["unshare"]
PRIVATE = bool(FLAGS & 0x00020000)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.unshare.argtypes = [ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

def report(**items):
    os.write(REPORT, (json.dumps(items) + "\n").encode())

def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, what + ": " + os.strerror(err))

def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None
    check(libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), "mount " + dst)

def prctl(option, value):
    check(libc.prctl(option, value, 0, 0, 0), "prctl %d" % option)

def build_root():
    mount("tmpfs", ROOT, "tmpfs", MS_NOSUID | MS_NODEV, "size=%dm,mode=755" % cfg["tmpfs_mb"])
    bound = []
    def bind(path, device=False):
        dst = ROOT + path
        if os.path.isdir(path):
            os.makedirs(dst, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            open(dst, "a").close()
        mount(path, dst, None, MS_BIND | MS_REC)
        if not device:
            mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        bound.append(path)
    for name in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            os.symlink(os.readlink(path), ROOT + path)
        elif os.path.isdir(path):
            bind(path)
    for path in cfg["python_dirs"]:
        if not any(path == b or path.startswith(b + "/") for b in bound):
            bind(path)
    os.mkdir(ROOT + "/dev", 0o755)
    for name in ("null", "zero", "full", "random", "urandom"):
        if os.path.exists("/dev/" + name):
            bind("/dev/" + name, device=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, ROOT + "/dev/" + name)
    for path, mode in (("/tmp", 0o1777), ("/dev/shm", 0o1777), ("/proc", 0o555), ("/sandbox", 0o700)):
        os.mkdir(ROOT + path)
        os.chmod(ROOT + path, mode)
    os.chown(ROOT + "/sandbox", UID, UID)

def drop_user():
    os.setgroups([])
    os.setresgid(UID, UID, UID)
    os.setresuid(UID, UID, UID)

def run_program():
    try:
        os.setpgid(0, 0)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for number, limit in cfg["rlimits"]:
            soft, hard = resource.getrlimit(number)
            if hard != resource.RLIM_INFINITY and os.geteuid() != 0:
                limit = [min(limit[0], hard), min(limit[1], hard)]
            resource.setrlimit(number, tuple(limit))
        prctl(38, 1)  # PR_SET_NO_NEW_PRIVS: no setuid binary can hand privileges back
        if UID is not None:
            drop_user()
        os.set_inheritable(REPORT, False)
        python = cfg["python"]
        os.execv(python, [python, "-S", "-c", cfg["runner"]])
    except BaseException as exc:
        report(error="could not start the program: %s" % exc)
    os._exit(127)

def children():
    found = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open("/proc/self/task/%s/children" % tid) as f:
                found += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return found

def reap_others(child):
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == child:
            return
        os.waitpid(info.si_pid, 0)

def kill_everything(child):
    try:
        os.killpg(child, signal.SIGKILL)
    except OSError:
        pass
    if FLAGS & 0x20000000:
        os.kill(-1, signal.SIGKILL)  # pid 1 of a PID namespace: every process in it
    elif UID is not None:
        killer = os.fork()
        if killer == 0:
            try:
                drop_user()
                os.kill(-1, signal.SIGKILL)  # as the sandbox uid: every process of that uid
            except BaseException:
                pass
            os._exit(0)
        os.waitpid(killer, 0)

def reap_all():
    # Orphans come to us (pid 1 or subreaper); kill each generation until none is left.
    give_up = time.monotonic() + 5.0
    while time.monotonic() < give_up:
        for pid in children():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 0
        if pid == 0:
            time.sleep(0.005)
    return len(children()) or 1

def supervise(parent):
    try:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if not FLAGS & 0x20000000 and os.getppid() != parent:
            os._exit(1)
        if not FLAGS & 0x20000000:
            prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: escaped grandchildren are reparented to us
        if PRIVATE:
            mount("proc", ROOT + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            os.chroot(ROOT)
            os.chdir("/sandbox")
        started = time.monotonic()
        child = os.fork()
        if child == 0:
            run_program()
        try:
            os.setpgid(child, child)
        except OSError:
            pass
        report(child=child)
        deadline = started + cfg["wall_s"]
        timed_out = False
        while os.waitid(os.P_PID, child, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            reap_others(child)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            signal.sigtimedwait([signal.SIGCHLD], min(remaining, 1.0))
        elapsed = time.monotonic() - started
        kill_everything(child)
        _, status, usage = os.wait4(child, 0)
        leftovers = reap_all()
        report(end={
            "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss,
            "timed_out": timed_out, "elapsed_s": elapsed, "leftovers": leftovers})
    except BaseException as exc:
        report(error="the sandbox supervisor failed: %s" % exc)
        os._exit(1)
    os._exit(0)

try:
    if FLAGS:
        check(libc.unshare(FLAGS), "unshare")
    if PRIVATE:
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        build_root()
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    parent = os.getpid()
    init = os.fork()
    if init == 0:
        supervise(parent)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
    os.waitpid(init, 0)
except BaseException as exc:
    report(error="the sandbox could not be set up: %s" % exc)
    os._exit(2)
os._exit(0)
'''

# The program's own interpreter, run as `python -S -c _RUNNER` with the source on stdin. The audit
# hook also sees `_socket`, so it catches more than a patched `socket.socket` would; code that uses
# ctypes or starts another interpreter gets past it, which is why the network namespace matters.
_RUNNER = r'''
import os, sys
def _refuse_network(event, args):
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        raise PermissionError("network access is disabled in the sandbox")
sys.addaudithook(_refuse_network)
_source = sys.stdin.buffer.read()
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
import linecache
_text = _source.decode("utf-8", "replace")
linecache.cache["solution.py"] = (len(_text), None, _text.splitlines(True), "solution.py")
sys.argv = ["solution.py"]
_globals = {"__name__": "__main__", "__builtins__": __builtins__, "__file__": "solution.py"}
try:
    exec(compile(_source, "solution.py", "exec", dont_inherit=True), _globals)
except SystemExit:
    raise
except BaseException as _exc:
    import traceback
    _tb = _exc.__traceback__
    traceback.print_exception(type(_exc), _exc, _tb.tb_next if _tb is not None else None)
    sys.exit(1)
'''

_KILL_UID = r'''
import os, signal, sys
uid = int(sys.argv[1])
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
os.kill(-1, signal.SIGKILL)
'''

_caps_lock = threading.Lock()
_caps: tuple[_Tier, dict[str, Any]] | None = None


def capabilities() -> dict[str, Any]:
    """Say which isolation layers `run_python` uses on this machine (probed once per process)."""
    _, caps = _select_tier()
    return dict(caps)


def run_python(source: str, *, limits: Limits = Limits()) -> SandboxResult:
    """Run `source` as a script in the sandbox and grade how it ended; never raise for what it does."""
    started = time.monotonic()
    try:
        problem = _check_limits(limits)
        if problem:
            return _error(problem, started)
        tier, caps = _select_tier()
        if tier is None:
            return _error(str(caps["detail"]), started)
        return _execute(source, limits, tier)
    except Exception as exc:  # a failure of the sandbox itself must not take the worker down
        return _error(f"the sandbox failed: {type(exc).__name__}: {exc}", started)


def _check_limits(limits: Limits) -> str:
    if not (limits.cpu_s > 0 and limits.wall_s > 0):
        return "limits: cpu_s and wall_s must be positive"
    if limits.memory_mb < 32 or limits.max_processes < 1 or limits.max_file_mb < 1:
        return "limits: memory_mb must be at least 32, max_processes and max_file_mb at least 1"
    return ""


def _error(reason: str, started: float) -> SandboxResult:
    return SandboxResult(status="error", passed=False, returncode=None, stdout="", stderr="",
                         duration_s=time.monotonic() - started, reason=reason)


def _select_tier() -> tuple[_Tier | None, dict[str, Any]]:
    global _caps
    with _caps_lock:
        if _caps is not None:
            return _caps
        tier, caps = _probe()
        if tier is not None:  # a failed probe is retried on the next call rather than remembered
            _caps = (tier, caps)
        return tier, caps


def _probe() -> tuple[_Tier | None, dict[str, Any]]:
    """Try the strongest isolation first and keep the first that runs a trivial program."""
    as_root = os.geteuid() == 0
    failures = []
    chosen = None
    for tier in _ROOT_TIERS if as_root else _USER_TIERS:
        result = _execute("import os\nprint('ok', os.getuid())\n", Limits(cpu_s=5, wall_s=10), tier)
        if result.passed and result.stdout.startswith("ok"):
            chosen = tier
            break
        failures.append(f"{tier.name}: {result.reason} {result.stderr.strip()[-300:]}".strip())
    if chosen is None and as_root:
        detail = ("refusing to run untrusted code as root: no unprivileged sandbox user could be used ("
                  + "; ".join(failures) + ")")
    elif chosen is None:
        detail = "no sandbox tier works here: " + "; ".join(failures)
    else:
        detail = "; ".join(failures)
    caps: dict[str, Any] = {
        "tier": chosen.name if chosen else None,
        "runs_as_root": as_root,
        "user_drop": bool(chosen and chosen.drop_user),
        "network_namespace": bool(chosen and chosen.unshare & _CLONE_NEWNET),
        "pid_namespace": bool(chosen and chosen.unshare & _CLONE_NEWPID),
        "private_root": bool(chosen and chosen.private_root),
        "python_network_guard": True,
        "uid_range": [SANDBOX_UID_BASE, SANDBOX_UID_BASE + SANDBOX_UID_SLOTS - 1] if as_root else None,
        "detail": detail,
    }
    return chosen, caps


def _execute(source: str, limits: Limits, tier: _Tier) -> SandboxResult:
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
        source_path = os.path.join(base, "solution.py")
        with open(source_path, "wb") as f:
            f.write(source.encode("utf-8", "surrogatepass"))
        source_file = stack.enter_context(open(source_path, "rb"))
        out_file = stack.enter_context(open(os.path.join(base, "stdout"), "wb"))
        err_file = stack.enter_context(open(os.path.join(base, "stderr"), "wb"))
        report_fd = os.open(os.path.join(base, "report"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        stack.callback(os.close, report_fd)

        python = os.path.realpath(sys.executable)
        home = "/sandbox" if tier.private_root else work
        config = {
            "report_fd": report_fd, "root": work, "uid": uid, "unshare": tier.unshare,
            "python": python, "runner": _RUNNER, "wall_s": limits.wall_s,
            "python_dirs": sorted({os.path.realpath(p) for p in
                                   (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(python))}),
            "tmpfs_mb": 2 * limits.max_file_mb + 16,
            "rlimits": _rlimits(limits, tier),
        }
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": home, "TMPDIR": "/tmp" if tier.private_root else work,
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "PYTHONSAFEPATH": "1",
            "PYTHONNOUSERSITE": "1", "PYTHONUTF8": "1", "AVENGERS_SANDBOX": "1",
        }
        try:
            proc = subprocess.Popen(
                [python, "-I", "-S", "-c", _BOOTSTRAP, json.dumps(config)],
                stdin=source_file, stdout=out_file, stderr=err_file, pass_fds=(report_fd,),
                cwd=work, env=env, start_new_session=True, close_fds=True)
        except OSError as exc:
            return _error(f"could not start the sandbox: {exc}", started)
        exited = _wait_for_exit(proc.pid, limits.wall_s + _SUPERVISOR_GRACE_S)
        # The supervisor is not reaped yet, so its pid (and process group id) cannot be reused.
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        report = _read_report(os.path.join(base, "report"))
        if not exited and not tier.unshare & _CLONE_NEWPID and "child" in report:
            with contextlib.suppress(OSError):
                os.killpg(int(report["child"]), signal.SIGKILL)
        if uid is not None:
            _kill_uid(uid)
        out_file.flush()
        err_file.flush()
        stdout = _read_bounded(os.path.join(base, "stdout"))
        stderr = _read_bounded(os.path.join(base, "stderr"))
        return _grade(report, stdout, stderr, limits, supervisor_killed=not exited,
                      duration_s=time.monotonic() - started)
    raise AssertionError("unreachable")  # pragma: no cover  (keeps mypy's return check happy)


def _rlimits(limits: Limits, tier: _Tier) -> list[tuple[int, tuple[int, int]]]:
    cpu = max(1, int(-(-limits.cpu_s // 1)))  # whole seconds, rounded up
    processes = limits.max_processes
    if not tier.drop_user:
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


def _grade(report: dict[str, Any], stdout: str, stderr: str, limits: Limits, *,
           supervisor_killed: bool, duration_s: float) -> SandboxResult:
    def result(status: str, reason: str, returncode: int | None) -> SandboxResult:
        return SandboxResult(status=status, passed=status == "passed", returncode=returncode,
                             stdout=stdout, stderr=stderr, duration_s=duration_s, reason=reason)

    wall = f"ran longer than its {limits.wall_s:g} s wall-clock limit (wall_s) and was stopped"
    if "error" in report:
        return result("error", str(report["error"]), None)
    end = report.get("end")
    if not isinstance(end, dict):
        if supervisor_killed:
            return result("timeout", wall, None)
        return result("error", "the sandbox supervisor ended without reporting how the program ended", None)
    exit_code, sig = end.get("exit"), end.get("signal")
    returncode = exit_code if exit_code is not None else -int(sig or 0)
    duration_s = float(end.get("elapsed_s", duration_s))
    last = _last_line(stderr)
    if end.get("timed_out") or supervisor_killed:
        return result("timeout", wall, returncode)
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and end.get("cpu_s", 0) >= limits.cpu_s):
        return result("timeout", f"used more than its {limits.cpu_s:g} s CPU-time limit (cpu_s)", returncode)
    if exit_code == 0:
        return result("passed", "exited with status 0", 0)
    memory = f"ran out of memory at its {limits.memory_mb} MB limit (memory_mb)"
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
    matches = re.findall(r'File "solution\.py", line (\d+)[^\n]*\n(?:[ \t]+(\S[^\n]*))?', stderr)
    if not matches:
        return ""
    line, code = matches[-1]
    return f" (solution.py line {line}" + (f": {code.strip()[:200]})" if code else ")")


def _remove_tree(path: str) -> None:
    def make_writable(func: Any, failed: str, exc_info: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed), 0o700)
            os.chmod(failed, 0o700)
            func(failed)

    shutil.rmtree(path, onerror=make_writable)
    if os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)
