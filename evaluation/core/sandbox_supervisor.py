"""The sandbox's supervisor: confine, start and watch one program, then report how it ended.

Standard library only. `sandbox.py` runs this file's source as ``python -I -S -c SOURCE CONFIG``, where
CONFIG is a JSON object, either directly (it then enters the namespaces itself, as root with
CAP_SYS_ADMIN, or none at all) or as pid 1 inside bubblewrap, which has already built the namespaces
and the private root. It forks the program's process (rlimits, drop to the sandbox uid, exec the
runner), enforces the wall-clock deadline and, with a PID namespace, the total memory of the run,
kills everything that is left, and reports as JSON lines on an inherited fd.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import time
from typing import Any

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
CLONE_NEWNS, CLONE_NEWPID = 0x00020000, 0x20000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
PROOF_FD = 3  # where the runner finds the write end of the proof pipe
WATCH_EVERY_S = 0.05  # how often the memory of the whole run is added up

cfg: dict[str, Any] = {}
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.unshare.argtypes = [ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def report(**items: Any) -> None:
    os.write(cfg["report_fd"], (json.dumps(items) + "\n").encode())


def check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, what + ": " + os.strerror(err))


def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    check(libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), "mount " + dst)


def prctl(option: int, value: int) -> None:
    check(libc.prctl(option, value, 0, 0, 0), "prctl %d" % option)


def build_root() -> None:
    """Make cfg["root"] a size-limited tmpfs holding read-only /usr, the Python install and a few /dev nodes."""
    root = cfg["root"]
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=%dm,mode=755" % cfg["tmpfs_mb"])
    bound: list[str] = []

    def bind(path: str, device: bool = False) -> None:
        dst = root + path
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
            os.symlink(os.readlink(path), root + path)
        elif os.path.isdir(path):
            bind(path)
    for path in cfg["python_dirs"]:
        if not any(path == b or path.startswith(b + "/") for b in bound):
            bind(path)
    os.mkdir(root + "/dev", 0o755)
    for name in ("null", "zero", "full", "random", "urandom"):
        if os.path.exists("/dev/" + name):
            bind("/dev/" + name, device=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, root + "/dev/" + name)
    for path, mode in (("/tmp", 0o1777), ("/dev/shm", 0o1777), ("/proc", 0o555), ("/sandbox", 0o700)):
        os.mkdir(root + path)
        os.chmod(root + path, mode)
    os.chown(root + "/sandbox", cfg["uid"], cfg["uid"])


def drop_user() -> None:
    uid = cfg["uid"]
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def run_program(proof_w: int) -> None:
    """In the forked child: limits, the sandbox uid, only stdio and the proof pipe open, exec the runner."""
    try:
        os.setpgid(0, 0)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for number, limit in cfg["rlimits"]:
            soft, hard = resource.getrlimit(number)
            if hard != resource.RLIM_INFINITY and os.geteuid() != 0:
                limit = [min(limit[0], hard), min(limit[1], hard)]
            resource.setrlimit(number, tuple(limit))
        prctl(PR_SET_NO_NEW_PRIVS, 1)  # no setuid binary can hand privileges back
        if cfg["uid"] is not None:
            drop_user()
        python = cfg["python"]
        os.dup2(proof_w, PROOF_FD)
        os.set_inheritable(PROOF_FD, True)
        os.closerange(PROOF_FD + 1, 1 << 16)  # the report fd, and whatever bubblewrap was handed
        os.execv(python, [python, "-S", "-c", cfg["runner"], str(PROOF_FD)])
    except BaseException as exc:
        os.write(2, ("could not start the program: %s\n" % exc).encode())
    os._exit(127)


def children() -> list[int]:
    found = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open("/proc/self/task/%s/children" % tid) as f:
                found += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return found


def reap_others(child: int) -> None:
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == child:
            return
        os.waitpid(info.si_pid, 0)


def kill_everything(child: int) -> None:
    try:
        os.killpg(child, signal.SIGKILL)
    except OSError:
        pass
    if cfg["pid_ns"]:
        os.kill(-1, signal.SIGKILL)  # from pid 1 of a PID namespace: every other process in it
    elif cfg["uid"] is not None:
        killer = os.fork()
        if killer == 0:
            try:
                drop_user()
                os.kill(-1, signal.SIGKILL)  # as the sandbox uid: every process of that uid
            except BaseException:
                pass
            os._exit(0)
        os.waitpid(killer, 0)


def reap_all() -> int:
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


def memory_in_use() -> int:
    """Add up the private memory of every other process in the PID namespace and the run's tmpfs files."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open("/proc/%s/statm" % entry) as f:
                    fields = f.read().split()
                total += (int(fields[1]) - int(fields[2])) * page  # resident minus file-backed and shmem
            except (OSError, IndexError, ValueError):
                continue
    seen = set()
    for path in ("/sandbox", "/tmp", "/dev/shm"):
        try:
            device = os.stat(path).st_dev
            if device not in seen:
                seen.add(device)
                usage = os.statvfs(path)
                total += (usage.f_blocks - usage.f_bfree) * usage.f_frsize
        except OSError:
            continue
    return total


def read_proof(proof_r: int) -> str:
    os.set_blocking(proof_r, False)
    chunks: list[bytes] = []
    try:
        while sum(map(len, chunks)) < 1 << 17:
            chunk = os.read(proof_r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode("ascii", "replace")


def supervise(parent: int | None) -> None:
    try:
        if parent is not None:  # bubblewrap's --die-with-parent does this for its pid 1
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if not cfg["pid_ns"] and os.getppid() != parent:
                os._exit(1)
        if not cfg["pid_ns"]:
            prctl(PR_SET_CHILD_SUBREAPER, 1)  # escaped grandchildren are reparented to us
        if cfg["unshare"] & CLONE_NEWNS:
            mount("proc", cfg["root"] + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            os.chroot(cfg["root"])
            os.chdir("/sandbox")
        proof_r, proof_w = os.pipe()
        started = time.monotonic()
        child = os.fork()
        if child == 0:
            run_program(proof_w)
        os.close(proof_w)
        try:
            os.setpgid(child, child)
        except OSError:
            pass
        report(child=child)
        deadline = started + cfg["wall_s"]
        limit = cfg["memory_total"] if cfg["pid_ns"] else None
        timed_out = memory_exceeded = False
        peak = 0
        while os.waitid(os.P_PID, child, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            reap_others(child)
            if limit:
                peak = max(peak, memory_in_use())
                if peak > limit:
                    memory_exceeded = True
                    break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            signal.sigtimedwait([signal.SIGCHLD], min(remaining, WATCH_EVERY_S if limit else 1.0))
        elapsed = time.monotonic() - started
        kill_everything(child)
        _, status, usage = os.wait4(child, 0)
        leftovers = reap_all()
        report(end={
            "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss,
            "timed_out": timed_out, "memory_exceeded": memory_exceeded, "peak_bytes": peak,
            "elapsed_s": elapsed, "leftovers": leftovers, "proof": read_proof(proof_r)})
    except BaseException as exc:
        report(error="the sandbox supervisor failed: %s" % exc)
        os._exit(1)
    os._exit(0)


def main() -> None:
    cfg.update(json.loads(sys.argv[1]))
    try:
        if cfg["inside_bwrap"]:
            # pid 1 of bubblewrap's namespaces: the program cannot signal us, and as we are not dumpable it
            # cannot read our memory or our fds either (the report fd, the read end of the proof pipe).
            prctl(PR_SET_DUMPABLE, 0)
            os.closerange(3, cfg["report_fd"])
            os.closerange(cfg["report_fd"] + 1, 1 << 16)
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
            supervise(None)
        if cfg["unshare"]:
            check(libc.unshare(cfg["unshare"]), "unshare")
        if cfg["unshare"] & CLONE_NEWNS:
            mount(None, "/", None, MS_REC | MS_PRIVATE)
            build_root()
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
        parent = os.getpid()
        init = os.fork()  # pid 1 of the new PID namespace, when there is one
        if init == 0:
            supervise(parent)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
        os.waitpid(init, 0)
    except BaseException as exc:
        report(error="the sandbox could not be set up: %s" % exc)
        os._exit(2)
    os._exit(0)


if __name__ == "__main__":
    main()
