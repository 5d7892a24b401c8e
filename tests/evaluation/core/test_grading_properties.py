from __future__ import annotations

import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evaluation.core.grading import TASK_TYPES, Extraction, Grade, extract_answer, grade, normalise_answer

_MATH_TIMEOUT_S = 2.0
_CODE_TIMEOUT_S = 2.0
_SLACK_S = 5.0  # a killed maths worker's replacement may still be importing sympy

_FRAGMENTS = [
    "\\boxed{", "\\fbox{", "{", "}", "\\frac{", "\\dfrac", "\\sqrt{", "\\pi", "^{", "_", "\\left(", "\\right]",
    "\\{", "\\}", "$", "\\$", "%", ",", ".", "-", "/", "=", "(", ")", "[", "]", "!", "\\infty", "\\text{ cm}",
    "Answer:", "The answer is", "**", "(B)", "option ", "Both", "```json\n", "```python\n", "```", "\n",
    '{"answer": ', '"answer": "', '"reasoning": "', '"', "\\\\", "\\n", "\\u00e9", "null", "true", "[1, 2]",
    "'", "9^{9^{9^{9}}}", "100000!", "√", "π", "x", "y", " ", "1,000", "0.5", "#### ", "# ",
]
_MIXED = st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.integers(-10**6, 10**6).map(str),
                            st.text(max_size=5)), max_size=25).map("".join)
_TEXT = st.one_of(st.text(max_size=200), _MIXED)
_NON_CODE = [t for t in TASK_TYPES if t != "code"]


_T = TypeVar("_T")


def _timed(call: Callable[..., _T], *args: Any, **kwargs: Any) -> tuple[_T, float]:
    started = time.monotonic()
    result = call(*args, **kwargs)
    return result, time.monotonic() - started


def _check(result: Grade) -> None:
    assert isinstance(result, Grade)
    assert isinstance(result.correct, bool)
    assert 0.0 <= result.score <= 1.0
    assert result.extracted is None or isinstance(result.extracted, str)
    assert isinstance(result.reason, str) and result.reason


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(response=_TEXT, gold=_TEXT, task_type=st.sampled_from(_NON_CODE))
def test_grading_never_raises_and_returns_in_time(response: str, gold: str, task_type: str) -> None:
    options = {"timeout_s": _MATH_TIMEOUT_S} if task_type == "math" else {}
    result, elapsed = _timed(grade, task_type, response, gold, **options)
    _check(result)
    assert elapsed < _MATH_TIMEOUT_S + _SLACK_S
    if task_type != "qa":
        assert result.score in (0.0, 1.0)
        assert result.correct == (result.score == 1.0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXT)
def test_extraction_and_normalisation_never_raise(text: str) -> None:
    found, elapsed = _timed(extract_answer, text)
    assert isinstance(found, Extraction)
    assert found.method in ("boxed", "json", "answer_colon", "the_answer_is", "last_line", "none")
    assert (found.answer is None) == (found.method == "none")
    assert elapsed < _SLACK_S
    for task_type in TASK_TYPES:
        options = {"timeout_s": _MATH_TIMEOUT_S} if task_type == "math" else {}
        key, elapsed = _timed(normalise_answer, task_type, text, **options)
        assert key is None or (isinstance(key, str) and key)
        assert elapsed < _MATH_TIMEOUT_S + _SLACK_S


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=_TEXT, task_type=st.sampled_from(_NON_CODE))
def test_grading_a_response_twice_gives_the_same_verdict(answer: str, task_type: str) -> None:
    # The second call is served from the caches: they must not change the verdict.
    options = {"timeout_s": _MATH_TIMEOUT_S} if task_type == "math" else {}
    first = grade(task_type, f"Answer: {answer}", answer, **options)
    second = grade(task_type, f"Answer: {answer}", answer, **options)
    if "timed out" not in first.reason + second.reason:
        assert first.correct == second.correct


def _spellings(value: Fraction) -> list[str]:
    n, d = value.numerator, value.denominator
    spellings = [f"{n}/{d}", rf"\frac{{{n}}}{{{d}}}", rf"\dfrac{{{n}}}{{{d}}}", rf"\boxed{{{n}/{d}}}"]
    if d == 1:
        spellings += [str(n), f"{n:,}", f"${n}.00", f"{n} dollars", f"x = {n}"]
    elif all(p in (2, 5) for p in _prime_factors(d)):
        spellings += [str(float(value)), f"{float(value)}0"]
    return spellings


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while n > 1 and p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors + ([n] if n > 1 else [])


_GOLDS = st.one_of(st.fractions(min_value=-1000, max_value=1000, max_denominator=20).map(str),
                   st.sampled_from([r"\frac{\sqrt{2}}{2}", r"\pi", "0.5", "1,000", r"\{1, 2\}", "x + 1", "Monday"]),
                   _MIXED)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.fractions(min_value=-10**6, max_value=10**6, max_denominator=40), gold=_GOLDS)
def test_answers_with_the_same_key_grade_the_same(value: Fraction, gold: str) -> None:
    spellings = _spellings(value)
    assert len({normalise_answer("math", s) for s in spellings}) == 1, spellings
    grades = [grade("math", f"Answer: {s}", gold, timeout_s=_MATH_TIMEOUT_S) for s in spellings]
    if not any("timed out" in g.reason for g in grades):
        assert len({g.correct for g in grades}) == 1, [(s, g.reason) for s, g in zip(spellings, grades)]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(response=st.one_of(_TEXT, _TEXT.map(lambda body: f"```python\n{body}\n```")), gold=_TEXT)
def test_code_grading_never_raises_and_returns_in_time(response: str, gold: str) -> None:
    result, elapsed = _timed(grade, "code", response, gold, timeout_s=_CODE_TIMEOUT_S)
    _check(result)
    assert result.score in (0.0, 1.0)
    assert elapsed < _CODE_TIMEOUT_S + _SLACK_S
