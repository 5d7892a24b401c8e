"""Grade programs by running them, then their tests, in the sandbox (pass@1)."""
from __future__ import annotations

import ast
import re
from typing import Any

from evaluation.core.grading.extraction import short
from evaluation.core.grading.registry import Grade, GradingUnavailable, register_grader

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_OPEN_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n")


def _extract_program(response: str) -> str:
    """Return the last ```python block, else the last fenced block, else the whole response."""
    blocks = _FENCE.findall(response)
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    if python:
        return str(python[-1])
    if blocks:
        return str(blocks[-1][1])
    opened = list(_OPEN_FENCE.finditer(response))
    if opened:  # a response cut off inside its code block
        return response[opened[-1].end():]
    return response


def _test_source(tests: str) -> str:
    """Return the tests as Python lines: MBPP's list of assert strings is joined into lines."""
    text = tests.strip()
    if text.startswith("["):
        try:
            items = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            items = None
        if isinstance(items, (list, tuple)) and all(isinstance(item, str) for item in items):
            return "\n".join(items)
    return text


def _defined_functions(source: str) -> list[str]:
    """Return the names of the top-level functions in ``source``, in order."""
    return re.findall(r"^(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(", source, re.MULTILINE)


def _build_script(program: str, tests: str, *, entry_point: str | None, prompt: str | None) -> tuple[str, str]:
    """Return the program as it will run (with the prompt's lines it needs) and the tests that follow it."""
    test_lines = _test_source(tests)
    if entry_point is None and prompt:
        defined = _defined_functions(prompt)
        entry_point = defined[-1] if defined else None
    if prompt and (
        (entry_point and entry_point not in _defined_functions(program))
        or (not entry_point and not _defined_functions(program))
    ):
        # A HumanEval completion is the function body only: it follows the prompt's signature.
        program = prompt.rstrip("\n") + "\n" + program
    elif prompt:
        # A complete function still relies on the prompt's imports ("from typing import List").
        imports = [line for line in prompt.splitlines() if re.match(r"(?:from\s+\S+\s+)?import\s", line)]
        program = "\n".join(imports + [program]) if imports else program
    script = test_lines + "\n"
    if re.search(r"^def\s+check\s*\(", test_lines, re.MULTILINE):
        if entry_point is None:
            defined = [name for name in _defined_functions(program) if name != "check"]
            entry_point = defined[-1] if defined else None
        if entry_point is None:
            raise ValueError("the tests define check(candidate) but no entry point is known")
        script += f"\n\ncheck({entry_point})\n"
    return program.rstrip() + "\n", script


def _normalise_code(answer: str, **_: Any) -> str | None:
    """Return the program in an answer with trailing whitespace removed."""
    program = "\n".join(line.rstrip() for line in _extract_program(answer).strip("\n").splitlines())
    return program.strip("\n") or None


@register_grader("code", description="Code: pass@1 of the extracted program against the tests in the sandbox.",
                 normalise=_normalise_code, free_text=True, query_options=("tests", "entry_point"),
                 options=("tests", "entry_point", "prompt", "timeout_s", "memory_mb", "allow_weak_sandbox"),
                 query_text_option="prompt", setting_options={"allow_weak_sandbox": "SANDBOX_ALLOW_WEAK"})
def grade_code(response: str, gold: str, *, tests: str | None = None, entry_point: str | None = None,
               prompt: str | None = None, timeout_s: float = 10.0, memory_mb: int = 512,
               allow_weak_sandbox: bool = False, **_: Any) -> Grade:
    """Grade a program by running it, then its tests, in the sandbox: score 1.0 when all ran and passed.

    Raises GradingUnavailable when the sandbox cannot confine code here (see docs/GRADING.md).
    """
    program = _normalise_code(response) if response.strip() else None
    if program is None:
        return Grade(False, 0.0, None, "no program found in the response")
    test_text = tests if tests is not None else gold
    if not test_text or not test_text.strip():
        return Grade(False, 0.0, program, "no tests to run")
    try:
        runnable, test_script = _build_script(program, test_text, entry_point=entry_point, prompt=prompt)
    except ValueError as exc:
        return Grade(False, 0.0, program, str(exc))
    from evaluation.core import sandbox  # written alongside; imported late so maths grading never needs it

    limits = sandbox.Limits(cpu_s=float(timeout_s), wall_s=float(timeout_s), memory_mb=int(memory_mb))
    result = sandbox.run_python(runnable, limits=limits, tests=test_script, allow_weak=bool(allow_weak_sandbox))
    if result.status == "refused":
        raise GradingUnavailable(result.reason)
    if result.passed and result.finished:
        return Grade(True, 1.0, program, f"all tests passed in {result.duration_s:.2f}s")
    detail = result.reason if result.returncode == 0 else _last_error_line(result.stderr) or result.reason
    return Grade(False, 0.0, program, f"tests {result.status}: {short(detail, 200)}")


def _last_error_line(stderr: str) -> str:
    """Return the last non-empty line of a traceback, e.g. "AssertionError"."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
