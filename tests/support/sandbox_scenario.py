"""Run programs in the sandbox from another process, as another user or with fewer capabilities.

`tests/evaluation/core/test_sandbox_hostile.py` copies the sandbox's three modules and this file into a
folder every user may read, then runs ``python -I sandbox_scenario.py`` under capsh or setpriv. It reads a
JSON object on stdin: ``programs`` (name -> source, with ``{runner_pid}`` standing for this process's pid),
``limits`` (name -> Limits fields), ``allow_weak`` and ``no_bwrap`` (search for bubblewrap where it is not,
as on a machine without it). It prints one JSON line: the capabilities it saw and each program's result.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sandbox  # noqa: E402  (the copy beside this file)


def main() -> None:
    spec = json.load(sys.stdin)
    if spec.get("no_bwrap"):
        sandbox._BWRAP_SEARCH_PATH = "/nonexistent"
    allow_weak = bool(spec.get("allow_weak"))
    results = {}
    for name, source in spec["programs"].items():
        limits = sandbox.Limits(**spec.get("limits", {}).get(name, {"wall_s": 10, "memory_mb": 256}))
        result = sandbox.run_python(source.replace("{runner_pid}", str(os.getpid())), limits=limits,
                                    allow_weak=allow_weak)
        results[name] = dataclasses.asdict(result)
    caps = sandbox.capabilities(allow_weak=allow_weak)
    print(json.dumps({"uid": os.getuid(), "caps": caps, "results": results}))


if __name__ == "__main__":
    main()
