"""The core packages (*/core/) type-check under mypy --strict (mypy.ini), so `make test` and CI check them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def core_files() -> list[str]:
    """Every Python file under a top-level package's core/, relative to the repository."""
    return sorted(str(path.relative_to(REPO)) for path in REPO.glob("*/core/**/*.py"))


def test_every_core_module_passes_mypy_strict() -> None:
    files = core_files()
    assert {"routing/core/router.py", "evaluation/core/datasets.py", "evaluation/core/grading/math.py"} <= set(files)
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "mypy.ini", *files], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
