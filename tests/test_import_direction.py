"""Imports run one way: config -> routing -> evaluation -> avengers_web; devtools and every core stay plain.

Read statically (every import statement, those inside functions included), so a lazy import cannot hide a
dependency that runs the wrong way.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Each package may import the ones after it, never the ones before it.
LAYERS = ("config", "routing", "evaluation", "avengers_web")
OURS = (*LAYERS, "devtools")


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # `from routing import serving` imports routing.serving
                yield node.lineno, f"{node.module}.{alias.name}"


def modules_of(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def top(module: str) -> str:
    return module.split(".", 1)[0]


def violations(package: str, allowed: set[str]) -> list[str]:
    return [f"{path.relative_to(REPO)}:{line} imports {module}"
            for path in modules_of(package) for line, module in imported_modules(path)
            if top(module) in OURS and top(module) != package and top(module) not in allowed]


def test_each_layer_imports_only_the_layers_below_it() -> None:
    found = []
    for index, package in enumerate(LAYERS):
        allowed = set(LAYERS[index + 1:]) | ({"devtools"} if package == "config" else set())
        found += violations(package, allowed)
    assert found == []


def test_devtools_import_no_app_and_no_django() -> None:
    found = violations("devtools", set())
    found += [f"{path.relative_to(REPO)}:{line} imports {module}" for path in modules_of("devtools")
              for line, module in imported_modules(path) if top(module) in ("django", "rest_framework", "celery")]
    assert found == []


def test_core_modules_import_only_cores_and_no_django() -> None:
    found = []
    cores = [path for package in OURS for path in modules_of(package) if "core" in path.relative_to(REPO).parts]
    assert len(cores) > 20
    for path in cores:
        for line, module in imported_modules(path):
            parts = module.split(".")
            foreign_app = top(module) in OURS and (len(parts) < 2 or parts[1] != "core")
            if top(module) in ("django", "rest_framework", "celery", "httpx") or foreign_app:
                found.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert found == []


def test_the_checker_sees_a_wrong_way_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from config import settings\n    import routing.serving\n")
    assert [name for _, name in imported_modules(module)] == ["config", "config.settings", "routing.serving"]
