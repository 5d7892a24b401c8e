"""The one table of graders: what each task type grades with, normalises with and reads as options.

A grader module registers its function with ``register_grader``; every list of task types, the options a
query's metadata may set, the options a run fills in (``grader_options``) and which answers are free text
are read from here.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, overload

from avengers_web.core.registry import Decorated, Registry


@dataclass(frozen=True)
class Grade:
    """The verdict on one response."""

    correct: bool
    score: float  # 0..1
    extracted: str | None  # the normalised answer, or None when nothing could be extracted
    reason: str  # human-readable why, e.g. "boxed answer 1/2 equals gold 0.5"


class GradingUnavailable(Exception):
    """This machine cannot grade the response (the code sandbox refuses to run): no verdict on the answer."""


class GraderFunction(Protocol):
    """Grade one response against its gold answer."""

    def __call__(self, response: str, gold: str, **options: Any) -> Grade: ...


Normalise = Callable[..., str | None]  # (answer, **options) -> canonical key, None when no valid answer


@dataclass(frozen=True)
class Grader:
    """A registered grader and what a caller needs to know to call it."""

    name: str
    description: str
    higher_is_better: bool
    score: str  # "binary": 0 or 1; "f1": token F1 in [0, 1]
    options: tuple[str, ...]  # keyword options it reads; others are ignored
    query_options: tuple[str, ...]  # the options a query's metadata may set (never the caller's own)
    free_text: bool  # the answer is text as written (qa, code), not a canonical key (a number, a letter)
    normalise: Normalise  # the canonical key voting and grading compare
    function: GraderFunction
    query_text_option: str | None = None  # the option that receives the query's text (code: its prompt)
    # option -> the name of the deployment setting that sets it (never a query's: see register_grader)
    setting_options: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __call__(self, response: str, gold: str, **options: Any) -> Grade:
        """Run the grader."""
        return self.function(response, gold, **options)


GRADERS: Registry[Grader] = Registry("grader")


def register_grader(name: str, *, description: str, normalise: Normalise, higher_is_better: bool = True,
                    score: str = "binary", options: tuple[str, ...] = (), query_options: tuple[str, ...] = (),
                    free_text: bool = False, query_text_option: str | None = None,
                    setting_options: Mapping[str, str] | None = None) -> Callable[[Decorated], Decorated]:
    """Register the decorated function in ``GRADERS`` under ``name``."""
    from_settings = dict(setting_options or {})
    if not set(query_options) <= set(options):
        raise ValueError(f"grader {name!r}: query_options {query_options} must be among its options {options}")
    if query_text_option is not None and query_text_option not in options:
        raise ValueError(f"grader {name!r}: query_text_option {query_text_option!r} must be among its options")
    if not set(from_settings) <= set(options) - set(query_options):
        # A dataset must never set what the deployment decides (e.g. whether the sandbox may be weak).
        raise ValueError(f"grader {name!r}: setting_options {sorted(from_settings)} must be among its options "
                         "and not among its query_options")

    return GRADERS.registering(name, lambda function: Grader(
        name=name, description=description, higher_is_better=higher_is_better, score=score, options=options,
        query_options=query_options, free_text=free_text, normalise=normalise, function=function,
        query_text_option=query_text_option, setting_options=from_settings))


def unregister_grader(name: str) -> Grader:
    """Remove the grader registered under ``name`` and return it (for tests of a throw-away grader)."""
    return GRADERS.remove(name)


class RegistryView(Sequence[str]):
    """A read-only tuple-like view that is always read afresh from ``GRADERS``."""

    def __init__(self, read: Callable[[], tuple[str, ...]]) -> None:
        self._read = read

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[str, ...]: ...

    def __getitem__(self, index: int | slice) -> str | tuple[str, ...]:
        return self._read()[index]

    def __len__(self) -> int:
        return len(self._read())

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __contains__(self, value: object) -> bool:
        return value in self._read()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (tuple, list, RegistryView)):
            return self._read() == tuple(other)
        return NotImplemented

    def __repr__(self) -> str:
        return repr(self._read())


def _query_options() -> tuple[str, ...]:
    """Return the union of the graders' query options, in registration order."""
    return tuple(dict.fromkeys(option for grader in GRADERS.values() for option in grader.query_options))


TASK_TYPES = RegistryView(lambda: tuple(GRADERS))  # in registration order: math, mcq, code, label, qa, exact
QUERY_OPTIONS = RegistryView(_query_options)  # keys of a query's metadata that graders take as options


def _grader(task_type: str) -> Grader:
    """Return the grader of ``task_type``; raise ValueError for an unknown one."""
    grader = GRADERS.get(task_type)
    if grader is None:
        raise ValueError(f"unknown task type {task_type!r}; expected one of {', '.join(TASK_TYPES)}")
    return grader


def is_free_text(task_type: str) -> bool:
    """Return whether answers of ``task_type`` are free text, shown as written rather than as their key."""
    grader = GRADERS.get(task_type)
    return grader is not None and grader.free_text


def grade(task_type: str, response: str, gold: str, **options: Any) -> Grade:
    """Grade ``response`` against ``gold`` with the grader for ``task_type``."""
    grader = _grader(task_type)
    given: tuple[object, object] = (response, gold)  # untyped callers (JSON fields) may pass None
    if not all(isinstance(text, str) for text in given):
        return Grade(False, 0.0, None, "response and gold must be strings")
    try:
        return grader(response, gold, **options)
    except GradingUnavailable:
        raise  # the machine, not the response: the caller records it as an error, not as a score
    except Exception as exc:  # noqa: BLE001 - one odd response must not abort a whole evaluation run
        return Grade(False, 0.0, None, f"grader error: {type(exc).__name__}: {exc}"[:300])


def grader_options(task_type: str, *, metadata: Mapping[str, Any], query_text: str,
                   setting: Callable[[str], Any]) -> dict[str, Any]:
    """Return the options to grade a query of ``task_type`` with: its metadata's, its text's and the settings'.

    ``setting`` reads a deployment setting by name; the caller need not know which grader takes which.
    """
    grader = _grader(task_type)
    options = {key: metadata[key] for key in grader.query_options if key in metadata}
    if grader.query_text_option is not None:
        options.setdefault(grader.query_text_option, query_text)
    for option, name in grader.setting_options.items():
        options[option] = setting(name)
    return options


def normalise_answer(task_type: str, answer: str, **options: Any) -> str | None:
    """Return the canonical key of an extracted answer, or None when it holds no valid answer."""
    grader = _grader(task_type)
    if not isinstance(answer, str) or not answer.strip():
        return None
    try:
        key = grader.normalise(answer, **options)
    except Exception:  # noqa: BLE001 - an unreadable answer is just an invalid one
        return None
    return key or None


def normaliser(task_type: str, **options: Any) -> Callable[[str], str | None]:
    """Return ``normalise_answer`` bound to ``task_type`` and ``options``, for voting."""
    _grader(task_type)
    return partial(normalise_answer, task_type, **options)
