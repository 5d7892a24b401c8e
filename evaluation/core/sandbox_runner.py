"""The program's side of the sandbox: run the program, then its tests, then prove that they ran to the end.

Standard library only. The supervisor runs this file's source as ``python -S -c SOURCE PROOF_FD`` as the
sandboxed uid, with a JSON object on stdin: ``program`` (from ``solution.py``: as ``__main__`` when it runs
alone, as the module ``solution`` when tests follow, so that its ``if __name__ == "__main__":`` block does not
run, as in the usual HumanEval/MBPP harnesses), ``tests`` (None, or source run after the program in the same
namespace, as ``tests.py``) and ``secret``.
When both ran to their last line, the runner writes the secret to PROOF_FD, a pipe that only the
supervisor reads, and exits 0: an exit status alone proves nothing, since ``sys.exit(0)`` or
``os._exit(0)`` before the tests also exits 0. The secret is per run and sits only in this process,
so a program that exits early never writes it. (A program written to hunt for it in the runner's own
frames could find it: the sandbox, not this proof, is the security boundary.)

An audit hook refuses socket connections. It also sees ``_socket``, so it catches more than a patched
``socket.socket`` would; code that uses ctypes or starts another interpreter gets past it, which is
why the network namespace matters.
"""
from __future__ import annotations

import os
import sys
from typing import Any

_NETWORK_EVENTS = ("socket.connect", "socket.sendto", "socket.sendmsg")


def _refuse_network(event: str, args: tuple[Any, ...]) -> None:
    if event in _NETWORK_EVENTS:
        raise PermissionError("network access is disabled in the sandbox")


def _run(name: str, source: str, namespace: dict[str, Any]) -> bool:
    """Compile and run ``source`` as file ``name``; on an error print its traceback without our frames."""
    import linecache

    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    try:
        exec(compile(source, name, "exec", dont_inherit=True), namespace)
    except SystemExit:
        raise
    except BaseException as exc:
        import traceback

        tb = exc.__traceback__
        traceback.print_exception(type(exc), exc, tb.tb_next if tb is not None else None)
        return False
    return True


def _say(text: str) -> None:
    try:
        os.write(2, text.encode() + b"\n")
    except OSError:
        pass


def _prove(fd: int, secret: str) -> None:
    try:
        os.write(fd, secret.encode())
    except OSError:
        pass  # the program closed or replaced the fd: no proof, so no pass


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


def main() -> None:
    sys.addaudithook(_refuse_network)
    import json

    payload = json.loads(sys.stdin.buffer.read().decode("utf-8", "surrogatepass"))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    proof_fd = int(sys.argv[1])
    program, tests, secret = payload["program"], payload["tests"], payload["secret"]
    del payload
    sys.argv = ["solution.py"]
    namespace: dict[str, Any] = {"__name__": "__main__" if tests is None else "solution",
                                 "__builtins__": __builtins__, "__file__": "solution.py"}
    if tests is None:
        if not _run("solution.py", program, namespace):
            sys.exit(1)
        _flush()
        _prove(proof_fd, secret)
        return
    for name, source, what in (("solution.py", program, "the program"), ("tests.py", tests, "the tests")):
        try:
            ran = _run(name, source, namespace)
        except SystemExit as exc:
            _flush()
            _say(f"SystemExit: {what} called sys.exit({exc.code!r}) before the tests finished")
            os._exit(1)
        if not ran:
            _flush()
            os._exit(1)
    _flush()
    _prove(proof_fd, secret)
    # Whatever the program left behind (threads, atexit handlers) can no longer change the verdict.
    os._exit(0)


if __name__ == "__main__":
    main()
