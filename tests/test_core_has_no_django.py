"""The core packages must import without Django, settings or a network."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_importing_every_core_module_leaves_django_out() -> None:
    modules = [
        f"{package}.core.{info.name}"
        for package in ("avengers_web", "evaluation", "routing")
        for info in pkgutil.iter_modules([str(REPO / package / "core")])
    ]
    assert "evaluation.core.datasets" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'django' or m.startswith(('django.', 'celery', 'httpx')))\n"
        "print(','.join(bad))\n"
    )
    # Import the packages' core without running the apps' __init__ side effects of Django.
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert result.stdout.strip() == ""
