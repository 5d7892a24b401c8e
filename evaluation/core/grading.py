"""Grade model responses against gold answers, and normalise answers so that equal ones vote together.

Extraction (``extract_answer``) tries these in order and stops at the first that finds something:

1. ``json``: the ``answer`` field of the first JSON object that has one (in a ```json fence or bare),
   skipping template placeholders such as ``"___"``; when that object does not parse, the first
   quoted ``"answer": "..."`` field anywhere, then the first unquoted one. String values are decoded
   tolerantly: ``\\frac`` written unescaped in a JSON string stays a LaTeX command instead of becoming
   a form feed, and invalid escapes such as ``\\sqrt`` are kept as written. JSON comes first because a
   model asked for a JSON answer puts its final answer there, while its reasoning may hold
   intermediate ``\\boxed`` values.
2. ``boxed``: the content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces balanced).
3. ``answer_colon``: the text after the last "Answer:" (also "Final answer:", "**Answer:**").
4. ``the_answer_is``: the text after the last "the answer is", up to the end of that sentence.
5. ``last_line``: the last non-empty line, unless it is reasoning cut off by the token limit (over 300
   characters, a JSON key line, or a long sentence that stops mid-way).
6. ``none``: nothing was found.

What was found is tidied: a ``\\boxed{}`` inside it is unwrapped, and for methods 3-5 markdown
emphasis and a sentence-ending full stop are dropped. JSON values otherwise keep their exact text:
in a Python-literal answer (CRUXEval) every character counts.

Each task type has one normaliser (``normalise_answer``) that turns an extracted answer into a
canonical key. Grading decides from the keys, so two answers with the same key grade the same, and
voting (``routing.core.voting``) uses the same normaliser through ``normaliser``.

Maths runs math-verify under a time limit that holds in any thread. math-verify's own timeout uses
SIGALRM, which only works in the main thread, so plain numbers (most answers) are compared here as
exact rationals, and everything else goes to a small pool of persistent worker processes that run
math-verify with its timeout disabled; a worker that overruns is killed and replaced.
docs/GRADING.md has the rules of every task type.
"""
from __future__ import annotations

import ast
import atexit
import json
import os
import re
import select
import string
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

TASK_TYPES = ("math", "mcq", "code", "label", "qa", "exact")


@dataclass(frozen=True)
class Grade:
    """The verdict on one response."""

    correct: bool
    score: float  # 0..1
    extracted: str | None  # the normalised answer, or None when nothing could be extracted
    reason: str  # human-readable why, e.g. "boxed answer 1/2 equals gold 0.5"


@dataclass(frozen=True)
class Extraction:
    """The final answer found in a response and the rule that found it."""

    answer: str | None
    method: str  # "boxed", "json", "answer_colon", "the_answer_is", "last_line", "none"


class GradingUnavailable(Exception):
    """This machine cannot grade the response (the code sandbox refuses to run): no verdict on the answer."""


class GraderFunction(Protocol):
    """Grade one response against its gold answer."""

    def __call__(self, response: str, gold: str, **options: Any) -> Grade: ...


@dataclass(frozen=True)
class Grader:
    """A registered grader and what a caller needs to know to call it."""

    name: str
    description: str
    higher_is_better: bool
    score: str  # "binary": 0 or 1; "f1": token F1 in [0, 1]
    options: tuple[str, ...]  # keyword options it reads; others are ignored
    function: GraderFunction

    def __call__(self, response: str, gold: str, **options: Any) -> Grade:
        """Run the grader."""
        return self.function(response, gold, **options)


GRADERS: dict[str, Grader] = {}
_G = TypeVar("_G", bound=GraderFunction)


def register_grader(name: str, *, description: str, higher_is_better: bool = True, score: str = "binary",
                    options: tuple[str, ...] = ()) -> Callable[[_G], _G]:
    """Register the decorated function in ``GRADERS`` under ``name``."""

    def decorate(function: _G) -> _G:
        if name in GRADERS:
            raise ValueError(f"grader {name!r} is already registered")
        GRADERS[name] = Grader(name=name, description=description, higher_is_better=higher_is_better,
                               score=score, options=options, function=function)
        return function

    return decorate


# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------

_ANSWER_KEY = re.compile(r'"answer"\s*:\s*')
_ANSWER_COLON = re.compile(r"(?i)\b(?:final\s+)?answer\b[*_ ]*[:：][*_]*[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"(?i)\banswer\s+(?:is|would\s+be|will\s+be)\b[*_]*\s*[:：]?[ \t]*([^\n]*)")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_BOX = re.compile(r"\\(?:boxed|fbox)")
_CONTROL = re.compile(r"[\x08\x0c\t\r\n]")
# LaTeX commands that start with a JSON escape letter; "\nb" or "\t+3" stay newline and tab.
_LATEX_AFTER_ESCAPE = re.compile(
    r"(?:frac|times|text\w*|theta|tau|tan|tanh|to|top|triangle|tfrac|tilde|right\w*|rangle|rfloor|rceil|rho|"
    r"rm|neq|ne|nu|not|nabla|neg|ni|newline|ngeq|nleq|beta|binom|bar|bf|boxed|bmod|bot|big\w*|bullet|"
    r"forall|flat|fbox)(?![A-Za-z])")
_PLACEHOLDER = re.compile(r"\s*(?:_{2,}|\.{3,}|…|<[^<>]{0,20}>)\s*")
_NOT_ANSWER_LINES = {"```", "```json", "{", "}", "[", "]", "---"}
_JSON_KEY_LINE = re.compile(r'\s*"[^"]{1,40}"\s*:')
_MAX_LAST_LINE = 300
_JSON_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def extract_answer(response: str) -> Extraction:
    """Return the final answer in ``response`` and the rule that found it."""
    if not isinstance(response, str) or not response.strip():
        return Extraction(None, "none")
    found = _json_answer(response)
    if found is not None:
        # Kept verbatim: in a Python-literal answer ("'  7  '") even the spaces count.
        return Extraction(_unbox(found.strip()) if _BOX.search(found) else found, "json")
    boxed = _last_boxed(response)
    if boxed is not None:
        return Extraction(boxed.strip(), "boxed")
    for method, pattern in (("answer_colon", _ANSWER_COLON), ("the_answer_is", _ANSWER_IS)):
        found = _last_answer_phrase(response, pattern, method)
        if found:
            return Extraction(found, method)
    lines = [line for line in response.splitlines() if line.strip() and line.strip() not in _NOT_ANSWER_LINES]
    if lines and len(lines[-1]) <= _MAX_LAST_LINE and not _JSON_KEY_LINE.match(lines[-1]) and not (
            len(_PROSE_WORD.findall(lines[-1])) >= 8 and re.search(r"[A-Za-z,;:]\s*$", lines[-1])):
        # A long last line, a JSON key line or a long sentence that stops mid-way ("... one at a") is
        # reasoning cut off by the token limit: no final answer.
        tidied = _tidy(lines[-1])
        if tidied:
            return Extraction(tidied, "last_line")
    return Extraction(None, "none")


def _json_answer(text: str) -> str | None:
    """Return the ``answer`` field of the first JSON object that has one, else the first such field."""
    if '"answer"' not in text:
        return None
    # Models echo the prompt's template ({"answer": "___"}) before answering: skip placeholders.
    objects = [text[a:b] for a, b in _top_level_objects(text) if '"answer"' in text[a:b]]
    for chunk in objects:
        value = _parsed_answer(chunk)
        if value is None:
            break
        if not _PLACEHOLDER.fullmatch(value):
            return value
    # The object does not parse (missing comma, unquoted expression, LaTeX escapes): read the first
    # quoted field anywhere, then the first unquoted one, as the source harness does.
    fields = list(_ANSWER_KEY.finditer(text))
    for field in fields:
        if text.startswith('"', field.end()):
            value = _decode_json_string(text, field.end() + 1)
            if value is not None and not _PLACEHOLDER.fullmatch(value):
                return value
    bare = next((f.end() for f in fields if not text.startswith('"', f.end())), None)
    if bare is None:
        return None
    try:
        decoded, _ = json.JSONDecoder().raw_decode(text[bare:bare + 10_000])
    except (ValueError, RecursionError):
        token = re.match(r"[^,}\n]+", text[bare:])
        return token.group(0).strip() if token else None
    return decoded if isinstance(decoded, str) else str(decoded)


def _top_level_objects(text: str) -> list[tuple[int, int]]:
    """Return the spans of balanced top-level ``{...}`` blocks, skipping braces inside JSON strings."""
    spans: list[tuple[int, int]] = []
    depth, start, in_string, escaped = 0, -1, False, False
    for i, ch in enumerate(text):
        if depth == 0:
            if ch == "{":
                depth, start, in_string, escaped = 1, i, False, False
            continue
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                spans.append((start, i + 1))
    return spans


def _parsed_answer(chunk: str) -> str | None:
    """Return the ``answer`` of a JSON object as text (Python-style for non-strings), None if it does not parse."""
    try:
        loaded = json.loads(chunk, strict=False)
    except (ValueError, RecursionError):
        return None
    if not isinstance(loaded, dict) or "answer" not in loaded:
        return None
    value = loaded["answer"]
    if not isinstance(value, str):
        # str() as the source harness does: [1, 'a'], True, None read as Python literals.
        return str(value)
    if _CONTROL.search(value):
        # "\frac" in a JSON string decodes to form feed + "rac": read the raw text again.
        for match in reversed(list(_ANSWER_KEY.finditer(chunk))):
            if chunk.startswith('"', match.end()):
                decoded = _decode_json_string(chunk, match.end() + 1)
                if decoded is not None:
                    return decoded
    return value


def _decode_json_string(text: str, start: int) -> str | None:
    """Decode the JSON string body starting at ``start``, keeping LaTeX backslashes as written."""
    out: list[str] = []
    i, n = start, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            return "".join(out)
        if ch != "\\" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2:i + 6]):
            out.append(chr(int(text[i + 2:i + 6], 16)))
            i += 6
        elif nxt in "bfnrt" and _LATEX_AFTER_ESCAPE.match(text, i + 1):
            # "\frac", "\times", "\neq", "\right": a LaTeX command, not a control character.
            out.append("\\" + nxt)
            i += 2
        elif nxt in _JSON_ESCAPES:
            out.append(_JSON_ESCAPES[nxt])
            i += 2
        else:
            out.append("\\" + nxt)  # invalid JSON escape such as "\sqrt": keep it
            i += 2
    return None  # unterminated string


def _last_boxed(text: str) -> str | None:
    """Return the content of the last complete ``\\boxed{...}`` or ``\\fbox{...}``."""
    for match in reversed(list(_BOX.finditer(text))):
        content = _braced_after(text, match.end())
        if content is not None:
            return content
    return None


def _braced_after(text: str, i: int) -> str | None:
    """Return the balanced ``{...}`` content (or a bare token) that follows position ``i``."""
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        token = re.match(r"[^\s$]+", text[i:])  # "\boxed 5"
        return token.group(0) if token else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def _unbox(text: str) -> str:
    """Return the content of the last ``\\boxed{}`` in ``text``, or ``text`` when there is none."""
    if "\\boxed" in text or "\\fbox" in text:
        boxed = _last_boxed(text)
        if boxed is not None:
            return boxed.strip()
    return text


def _last_answer_phrase(text: str, pattern: re.Pattern[str], method: str) -> str | None:
    """Return the tidied text after the last match of ``pattern``; the next line when it is empty."""
    for match in reversed(list(pattern.finditer(text))):
        found = match.group(1)
        if not _tidy(found):  # "**Answer:**" on a line of its own
            rest = text[match.end():].lstrip("\n")
            found = next((line for line in rest.splitlines() if line.strip()), "")
        inner = _ANSWER_IS.search(found) if method == "answer_colon" else None
        if inner is not None:
            found = inner.group(1)  # "Final Answer: The final answer is $5$. I hope it is correct."
        if method == "the_answer_is" or inner is not None:
            cut = _SENTENCE_END.search(found)  # a sentence, not "3.5"
            if cut is not None:
                found = found[:cut.start()]
        tidied = _tidy(found)
        if tidied:
            return tidied
    return None


def _tidy(text: str) -> str:
    """Strip markdown emphasis, a trailing full stop and a wrapping ``\\boxed{}``."""
    text = text.strip()
    for _ in range(3):
        before = text
        text = text.strip().strip("*_").strip()
        if text.startswith("#"):
            text = text.lstrip("#").strip()
        if text.endswith(".") and not text.endswith(".."):
            text = text[:-1].rstrip()
        if before == text:
            break
    return _unbox(text)


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def grade(task_type: str, response: str, gold: str, **options: Any) -> Grade:
    """Grade ``response`` against ``gold`` with the grader for ``task_type``."""
    grader = GRADERS.get(task_type)
    if grader is None:
        raise ValueError(f"unknown task type {task_type!r}; expected one of {', '.join(TASK_TYPES)}")
    if not isinstance(response, str) or not isinstance(gold, str):
        return Grade(False, 0.0, None, "response and gold must be strings")
    try:
        return grader(response, gold, **options)
    except GradingUnavailable:
        raise  # the machine, not the response: the caller records it as an error, not as a score
    except Exception as exc:  # noqa: BLE001 - one odd response must not abort a whole evaluation run
        return Grade(False, 0.0, None, f"grader error: {type(exc).__name__}: {exc}"[:300])


def normalise_answer(task_type: str, answer: str, **options: Any) -> str | None:
    """Return the canonical key of an extracted answer, or None when it holds no valid answer."""
    if task_type not in _NORMALISERS:
        raise ValueError(f"unknown task type {task_type!r}; expected one of {', '.join(TASK_TYPES)}")
    if not isinstance(answer, str) or not answer.strip():
        return None
    try:
        key = _NORMALISERS[task_type](answer, **options)
    except Exception:  # noqa: BLE001 - an unreadable answer is just an invalid one
        return None
    return key or None


def normaliser(task_type: str, **options: Any) -> Callable[[str], str | None]:
    """Return ``normalise_answer`` bound to ``task_type`` and ``options``, for voting."""
    if task_type not in _NORMALISERS:
        raise ValueError(f"unknown task type {task_type!r}; expected one of {', '.join(TASK_TYPES)}")
    return partial(normalise_answer, task_type, **options)


def _gold_text(task_type: str, gold: str) -> str:
    """Return the final answer in a gold that may be a worked solution."""
    text = gold.strip()
    if task_type != "math":
        return text
    if "####" in text:  # GSM8K solution: "... #### 20,000"
        return text.rsplit("####", 1)[1].strip()
    if text.startswith("#"):  # ZeroEval's GSM gold: "# 18"
        return text.lstrip("#").strip()
    return _unbox(text)  # MATH solution: "... \boxed{\frac{1}{2}}"


def _response_answer(response: str) -> tuple[str | None, str]:
    """Return the extracted answer and a short description of where it came from."""
    found = extract_answer(response)
    where = {"json": "JSON answer", "boxed": "boxed answer", "answer_colon": "'Answer:' answer",
             "the_answer_is": "'the answer is' answer", "last_line": "last-line answer"}.get(found.method, "answer")
    return found.answer, where


def _short(text: str | None, limit: int = 60) -> str:
    """Return ``text`` cut to ``limit`` characters for a reason string."""
    if text is None:
        return "nothing"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Maths
# ---------------------------------------------------------------------------------------------

_MAX_MATH_CHARS = 1000  # longer "answers" are runaway text, not final answers: never parsed
_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+")
_FRACTION = re.compile(r"([+-]?\d+)\s*/\s*([+-]?\d+)")
_LATEX_FRACTION = re.compile(r"([+-]?)\\frac\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))")
# Unit words after a number, a closing bracket or \pi: "5 cm", "(5 + 10) minutes", "2\pi radians".
_UNIT_TAIL = re.compile(r"(?:(?<=[\d)}])|(?<=\\pi))\s*((?:[A-Za-z]{2,}\.?(?:\s+|/|-|$))+)$")
_MATH_NAMES = {"pi", "sqrt", "frac", "cdot", "times", "mod", "pmod", "infty", "infinity", "sin", "cos", "tan",
               "log", "ln", "exp", "sec", "csc", "cot", "arcsin", "arccos", "arctan", "oo", "inf", "nan"}
_NOT_UNITS = _MATH_NAMES | {"and", "or", "to", "plus", "minus", "over", "divided", "by", "of", "is", "are", "equals"}
_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}(?![A-Za-z])")
_CURRENCY_PREFIX = re.compile(r"^(?:US\s*\$|USD|Rs\.?|INR|EUR|GBP|€|£|¥|₹)\s*", re.IGNORECASE)
_ASSIGNED_NAME = re.compile(r"[A-Za-z]\w*(?:\([^()=]*\))?")
_UNICODE_MATH = {"√": "\\sqrt ", "π": "\\pi ", "×": "\\times ", "·": "\\cdot ", "÷": "/", "−": "-", "–": "-",
                 "∞": "\\infty ", "≤": "\\le ", "≥": "\\ge ", "²": "^2", "³": "^3", "°": ""}
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})\s*(?:[ap]\.?\s?m\.?)?", re.IGNORECASE)
_WORDS = re.compile(r"[A-Za-z]{2,}(?:[ '-][A-Za-z]+)*")
_TEXT_BLOCK = re.compile(r"\\(?:text|textbf|mbox|mathrm)\s*\{([^{}]*)\}")


def _clean_math(text: str) -> str:
    """Strip what never changes a maths answer's value: delimiters, currency, units, % and spacing."""
    s = _strip_markup(text)
    prose = _prose_value(s)
    if prose is not None:
        s = _strip_markup(prose)
    return _strip_units(s)


def _strip_markup(text: str) -> str:
    """Drop delimiters, LaTeX spacing, degrees, %, currency and ``\\text`` units; spell unicode maths in LaTeX."""
    s = _unbox(text.strip())
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    s = s.strip().strip("`\"'*_").strip()
    s = re.sub(r"√\s*(?:\(([^()]*)\)|\{([^{}]*)\}|(\d+(?:\.\d+)?|[A-Za-z]))",
               lambda m: "\\sqrt{" + next(g for g in m.groups() if g is not None) + "}", s)
    for symbol, latex in _UNICODE_MATH.items():
        if symbol in s:
            s = s.replace(symbol, latex)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\[,;:! ]|~", "", s)  # LaTeX spacing, also "1\,000"
    s = s.replace("{,}", ",")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ|\\degree", "", s)
    s = s.replace("\\%", "").replace("%", "")  # percentages compare as their number: 50% == 50
    s = _CURRENCY_PREFIX.sub("", s).strip()
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1].rstrip()
    whole_text = _TEXT_BLOCK.fullmatch(s)
    if whole_text:  # "\text{Monday}" is the answer itself, not a unit
        return " ".join(whole_text.group(1).split())
    stripped = _TEXT_BLOCK.sub(" ", s).strip()  # "5\text{ cm}" -> "5"
    return " ".join((stripped or s).split())


def _prose_value(text: str) -> str | None:
    """Return the value a sentence states ("... = $460", "The game lasted 53 minutes"), None if not prose."""
    words = [w for w in _PROSE_WORD.findall(text) if w.lower() not in _MATH_NAMES]
    if len(words) < 2:
        return None
    sentences = [part for part in re.split(r"(?<=[.!?;])\s+", text) if re.search(r"\d", part)]
    if not sentences:
        return None  # "no solution": text, compared as text
    sentence = sentences[-1]
    if "=" in sentence and re.search(r"\d", sentence.rsplit("=", 1)[1]):
        sentence = sentence.rsplit("=", 1)[1]  # "... = $400 + $60 = $460": the result comes last
    sentence = _strip_units(sentence.strip().rstrip(".!?;,"))
    pieces = [piece for piece in _PROSE_WORD.split(sentence) if re.search(r"\d", piece)]
    if not pieces:
        return None
    piece = pieces[-1].strip(" \t,.;:!?'\"")
    if piece.count("(") != piece.count(")"):
        piece = piece.strip("()").strip()
    return piece


def _strip_units(text: str) -> str:
    """Turn "x = 5", "2:00 pm", "18 dollars" and "(5 + 10) minutes" into the bare value."""
    s = text.strip()
    clock = _CLOCK.fullmatch(s)
    if clock:
        # "2:00 pm" answers "what time": the hour; other times only match themselves.
        return clock.group(1) if clock.group(2) == "00" else s.lower()
    parts = re.split(r"(?<![<>=!])=(?!=)", s)
    if len(parts) > 1 and _number_value(_strip_units(parts[-1])) is not None and (
            _ASSIGNED_NAME.fullmatch(parts[-2].strip()) or not re.search(r"[A-Za-z]", parts[-2])):
        # "x = 5", "f(3) = 10", "20 - 12 = 8": the value after the last "="; "x^2 + y^2 = 25" stays whole.
        s = _strip_units(parts[-1])
    tail = _UNIT_TAIL.search(s)
    if tail and tail.start() > 0 and not any(
            w.lower().rstrip(".") in _NOT_UNITS for w in re.split(r"[\s/-]+", tail.group(1)) if w):
        s = s[:tail.start()].rstrip()  # "18 dollars", "5 cm", "1/2 cup", "(5 + 10) minutes"
    return " ".join(s.split())


def _number_value(text: str) -> Fraction | None:
    """Return the exact value of a plain number, fraction or integer ``\\frac``; None otherwise."""
    if len(text) > 400:
        return None
    try:
        if _NUMBER.fullmatch(text):
            return Fraction(text.replace(",", "").rstrip(".") or "x")
        match = _FRACTION.fullmatch(text)
        if match:
            return Fraction(int(match.group(1)), int(match.group(2)))
        match = _LATEX_FRACTION.fullmatch(text)
        if match:
            sign = -1 if match.group(1) == "-" else 1
            return sign * Fraction(int(match.group(2) or match.group(3)), int(match.group(4) or match.group(5)))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _number_key(value: Fraction) -> str:
    """Return the canonical text of an exact number: "1/2", "-3"."""
    return str(value)


def _numbers_equal(a: Fraction, b: Fraction) -> bool:
    """Return whether two numbers are equal exactly or after rounding both to 6 decimals."""
    # math-verify's float_rounding=6: "0.333333" is accepted for 1/3; "0.33" is not.
    return a == b or round(a, 6) == round(b, 6)


@dataclass(frozen=True)
class _MathKey:
    """The canonical key of a maths answer and what kind of value stands behind it."""

    kind: str  # "number" | "expr" | "text" | "timeout" | "error"
    key: str


def _math_key(cleaned: str, timeout_s: float) -> _MathKey:
    """Return the key of a cleaned maths answer, asking a worker when it is not a plain number."""
    value = _number_value(cleaned)
    if value is not None:
        return _MathKey("number", _number_key(value))
    if (_WORDS.fullmatch(cleaned) and cleaned.lower() not in _MATH_NAMES) or _CLOCK.fullmatch(cleaned):
        # "Monday", "Devon": math-verify would read a product of single-letter symbols.
        return _MathKey("text", cleaned.lower())
    if len([w for w in _PROSE_WORD.findall(cleaned) if w.lower() not in _MATH_NAMES]) >= 2:
        return _MathKey("text", cleaned)  # a sentence without a number in it: no maths to compare
    if len(cleaned) > _MAX_MATH_CHARS:
        return _MathKey("text", cleaned)
    cached: _MathKey | None = _KEY_CACHE.get(cleaned)
    if cached is not None:
        return cached
    try:
        reply = _math_pool().call({"op": "key", "text": cleaned}, timeout_s)
    except _WorkerTimeout:
        return _MathKey("timeout", cleaned)
    except _WorkerError as exc:
        return _MathKey("error", f"{cleaned} ({exc})")
    result = _MathKey(str(reply["kind"]), str(reply["key"]))
    _KEY_CACHE.put(cleaned, result)
    return result


def _normalise_math(answer: str, *, timeout_s: float = 5.0, **_: Any) -> str | None:
    """Return the canonical key of a maths answer: "1/2" for numbers, sympy text for expressions."""
    cleaned = _clean_math(answer)
    if not cleaned:
        return None
    key = _math_key(cleaned, float(timeout_s))
    # A timeout or worker failure still leaves a usable voting key: the cleaned text.
    return key.key if key.kind in ("number", "expr", "text") else cleaned


@register_grader("math", description="Maths equivalence through math-verify; plain numbers compared exactly.",
                 options=("timeout_s",))
def grade_math(response: str, gold: str, *, timeout_s: float = 5.0, **_: Any) -> Grade:
    """Grade a maths answer by equivalence with the gold, under ``timeout_s``."""
    deadline = time.monotonic() + float(timeout_s)
    answer, where = _response_answer(response)
    if answer is None:
        return Grade(False, 0.0, None, "no answer found in the response")
    cleaned_answer, cleaned_gold = _clean_math(answer), _clean_math(_gold_text("math", gold))
    if not cleaned_answer:
        return Grade(False, 0.0, None, f"{where} is empty after cleaning")
    if not cleaned_gold:
        return Grade(False, 0.0, None, "gold answer is empty")
    a = _math_key(cleaned_answer, max(deadline - time.monotonic(), 0.01))
    g = _math_key(cleaned_gold, max(deadline - time.monotonic(), 0.01))
    for side, key in (("answer", a), ("gold", g)):
        if key.kind == "timeout":
            return Grade(False, 0.0, cleaned_answer, f"timed out after {timeout_s}s reading the {side}")
        if key.kind == "error":
            return Grade(False, 0.0, cleaned_answer, f"could not read the {side}: {_short(key.key)}")
    shown = f"{where} {_short(a.key)}"
    if a.key == g.key:
        return Grade(True, 1.0, a.key, f"{shown} equals gold {_short(g.key)}")
    if a.kind == "number" and g.kind == "number":
        equal = _numbers_equal(Fraction(a.key), Fraction(g.key))
    elif a.kind == "text" or g.kind == "text":
        equal = False  # text that is not maths only matches itself
    else:
        pair = (g.kind, g.key, a.kind, a.key)
        cached = _EQUAL_CACHE.get(pair)
        if cached is None:
            try:
                reply = _math_pool().call({"op": "equal", "gold": [g.kind, g.key, cleaned_gold],
                                           "answer": [a.kind, a.key, cleaned_answer]},
                                          max(deadline - time.monotonic(), 0.01))
            except _WorkerTimeout:
                return Grade(False, 0.0, a.key, f"timed out after {timeout_s}s comparing {shown} with gold")
            except _WorkerError as exc:
                return Grade(False, 0.0, a.key, f"could not compare {shown} with gold: {exc}")
            cached = bool(reply["equal"])
            _EQUAL_CACHE.put(pair, cached)
        equal = cached
    verdict = "equals" if equal else "does not equal"
    return Grade(equal, 1.0 if equal else 0.0, a.key, f"{shown} {verdict} gold {_short(g.key)}")


class _LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        """Return the cached value for ``key`` or None."""
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Any, value: Any) -> None:
        """Store ``value`` under ``key``, dropping the oldest entry when full."""
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)


# Golds repeat once per model and sample: caching keys and comparisons saves most worker calls.
# Results are pure functions of their inputs; timeouts and worker errors are never cached.
_KEY_CACHE = _LRU(20_000)
_EQUAL_CACHE = _LRU(20_000)


class _WorkerTimeout(Exception):
    """The worker did not answer in time and was killed."""


class _WorkerError(Exception):
    """The worker died or answered nonsense."""


_WORKER_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from evaluation.core.grading import _serve_math_worker; _serve_math_worker(int(sys.argv[2]))")
_WORKER_START_S = 60.0  # importing sympy on a busy machine; not charged to any one answer's limit
_WORKER_MEMORY_BYTES = 2 * 1024**3


class _Worker:
    """One math-verify worker process, used by one thread at a time."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT, root, str(os.getpid())], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True)
        self._buffer = b""
        self.ready = False

    def request(self, message: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send ``message`` and return the reply; raise _WorkerTimeout after ``timeout_s``."""
        if not self.ready:
            hello = self._read_line(time.monotonic() + _WORKER_START_S)
            if hello is None or json.loads(hello).get("ready") is not True:
                raise _WorkerError("the maths worker did not start")
            self.ready = True
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except OSError as exc:
            raise _WorkerError("the maths worker exited") from exc
        line = self._read_line(time.monotonic() + timeout_s)
        if line is None:
            raise _WorkerTimeout()
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise _WorkerError(str(reply["error"]))
        return reply

    def _read_line(self, deadline: float) -> bytes | None:
        """Return the next line from the worker, None at the deadline; raise _WorkerError at EOF."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _WorkerError("the maths worker exited (out of memory?)")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def kill(self) -> None:
        """Stop the process now."""
        try:
            self.process.kill()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for stream in (self.process.stdin, self.process.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


class _MathPool:
    """Persistent math-verify workers; a worker that overruns its limit is killed and replaced."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._idle: list[_Worker] = []
        self._count = 0
        self._lock = threading.Condition()
        self._pid = os.getpid()
        # Workers die with the thread that started them (PR_SET_PDEATHSIG), so one long-lived thread
        # starts them all: a caller's short-lived pool thread must not take its worker down with it.
        self._launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="math-verify-launcher")

    def _start(self) -> _Worker:
        """Start a worker from the launcher thread."""
        return self._launcher.submit(_Worker).result()

    def call(self, message: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
        """Run ``message`` on an idle worker within ``timeout_s`` seconds of sending it."""
        worker = self._acquire()
        try:
            reply = worker.request(message, timeout_s)
        except (_WorkerTimeout, _WorkerError, ValueError, OSError) as exc:
            self._discard(worker)
            if isinstance(exc, (_WorkerTimeout, _WorkerError)):
                raise
            raise _WorkerError(f"bad reply from the maths worker: {exc}") from exc
        except BaseException:
            self._discard(worker)
            raise
        self._release(worker)
        return reply

    def _acquire(self) -> _Worker:
        """Return an idle worker, starting one when under the size limit, else wait for one."""
        with self._lock:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._count < self._size:
                    self._count += 1
                    break
                self._lock.wait()
        try:
            return self._start()
        except BaseException:
            with self._lock:
                self._count -= 1
                self._lock.notify()
            raise

    def _release(self, worker: _Worker) -> None:
        """Put ``worker`` back for the next caller."""
        with self._lock:
            self._idle.append(worker)
            self._lock.notify()

    def _discard(self, worker: _Worker) -> None:
        """Kill ``worker``, whatever it is doing, and start its replacement so that it warms up meanwhile."""
        worker.kill()
        try:
            replacement: _Worker | None = self._start()
        except (OSError, RuntimeError):  # RuntimeError: the launcher is shut down at exit
            replacement = None
        with self._lock:
            if replacement is None:
                self._count -= 1
            else:
                self._idle.insert(0, replacement)  # the warm ones are handed out first
            self._lock.notify()

    def close(self) -> None:
        """Kill every idle worker (busy ones are killed by their callers' timeouts)."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        if os.getpid() == self._pid:
            for worker in idle:
                worker.kill()
            self._launcher.shutdown(wait=False)


_POOL: _MathPool | None = None
_POOL_LOCK = threading.Lock()


def _math_pool() -> _MathPool:
    """Return this process's worker pool, a fresh one after a fork."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._pid != os.getpid():
            # A forked child (e.g. a Celery prefork worker) must not share its parent's pipes.
            _POOL = _MathPool(size=max(1, min(4, os.cpu_count() or 1)))
        return _POOL


def _close_pool() -> None:
    """Kill the workers when the interpreter exits."""
    if _POOL is not None:
        _POOL.close()


atexit.register(_close_pool)


def _serve_math_worker(parent: int) -> None:
    """Answer maths requests from stdin, one JSON line each, until stdin closes or ``parent`` dies."""
    import ctypes
    import logging
    import resource
    import signal

    # Die with the parent even in the middle of a runaway computation (the kernel sends SIGKILL).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        return

    # Runaway expressions (9^{9^{9^9}}) eat memory as well as time: fail fast instead of swapping.
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > _WORKER_MEMORY_BYTES:
            resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY_BYTES, hard))
    except (ValueError, OSError):
        pass
    logging.disable(logging.CRITICAL)  # math-verify logs each parse failure; the parent reports them
    # Replies go to a private copy of stdout: anything a library prints must not break the protocol.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import sympy  # type: ignore[import-untyped]
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify  # type: ignore[import-untyped]

    config = [LatexExtractionConfig(), ExprExtractionConfig()]
    exprs: dict[str, Any] = {}

    def read(text: str) -> tuple[str, str, Any]:
        """Return (kind, key, value) of a cleaned answer."""
        if text in exprs:
            return exprs[text]  # type: ignore[no-any-return]
        value = _number_value(text)
        if value is not None:
            result: tuple[str, str, Any] = ("number", _number_key(value), sympy.Rational(value.numerator,
                                                                                          value.denominator))
        else:
            # Timeouts are disabled here (they need the main thread's SIGALRM); the parent enforces them.
            parsed = parse(f"${text}$", config, parsing_timeout=None)
            expr = next((p for p in parsed if isinstance(p, (sympy.Basic, sympy.MatrixBase))), None)
            if expr is not None:
                try:
                    # latex2sympy builds unevaluated trees: 2^{10} and 1/\sqrt{2} need doit() to get
                    # the same key as 1024 and \sqrt{2}/2. A runaway doit() is what the parent's limit is for.
                    expr = expr.doit()
                except Exception:  # noqa: BLE001 - keep the unevaluated tree
                    pass
            if expr is None:
                result = ("text", " ".join(text.split()), None)
            elif isinstance(expr, sympy.Basic) and (expr.is_Rational or expr.is_Float):
                exact = Fraction(str(sympy.Rational(str(expr)) if expr.is_Float else expr))
                result = ("number", _number_key(exact), sympy.Rational(exact.numerator, exact.denominator))
            else:
                result = ("expr", str(expr), expr)
        if len(exprs) > 5000:
            exprs.clear()
        exprs[text] = result
        return result

    def value_of(kind: str, key: str, text: str) -> Any:
        """Return the sympy value behind a key, so the comparison depends on the key alone."""
        if kind == "number":
            exact = Fraction(key)
            denominator = exact.denominator
            while denominator % 2 == 0:
                denominator //= 2
            while denominator % 5 == 0:
                denominator //= 5
            if exact.denominator > 1 and denominator == 1:
                # A terminating decimal may be a rounded irrational: let math-verify compare it as a float.
                return sympy.Float(sympy.Rational(exact.numerator, exact.denominator), 30)
            return sympy.Rational(exact.numerator, exact.denominator)
        return read(text)[2]

    replies.write(json.dumps({"ready": True}) + "\n")
    replies.flush()
    for line in sys.stdin:
        try:
            message = json.loads(line)
            if message["op"] == "key":
                kind, key, _ = read(message["text"])
                reply: dict[str, Any] = {"kind": kind, "key": key}
            else:
                gold = value_of(*message["gold"])
                answer = value_of(*message["answer"])
                equal = gold is not None and answer is not None and verify(gold, answer, timeout_seconds=None)
                reply = {"equal": bool(equal)}
        except MemoryError:
            reply = {"error": "out of memory"}
        except Exception as exc:  # noqa: BLE001 - report it and keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


# ---------------------------------------------------------------------------------------------
# Multiple choice
# ---------------------------------------------------------------------------------------------


def _choice_letters(choices: Sequence[str] | Mapping[str, str] | None) -> tuple[str, dict[str, str]]:
    """Return the allowed letters and letter -> option text."""
    if choices is None:
        return string.ascii_uppercase, {}
    if isinstance(choices, Mapping):
        texts = {str(k).strip().upper(): str(v) for k, v in choices.items()}
    else:
        texts = {string.ascii_uppercase[i]: str(v) for i, v in enumerate(list(choices)[:26])}
    return "".join(sorted(texts)) or string.ascii_uppercase, texts


_AFTER_LETTER = {"and", "or", "nor", "but", "is", "are", "was", "were", "only", "because", "since", "as", "vs"}
_MARKED_LETTER = re.compile(
    r"(?i)\b(?:answer|option|choice)\b(?:\s+(?:is|would\s+be|will\s+be|should\s+be))?[*_]*\s*[:：]?[*_\s]*"
    r"(?:(?:option|choice)\s+)?[\(\[]?([A-Za-z])(?![A-Za-z0-9])[\)\]]?")
_DECORATED_LETTER = re.compile(r"\(([A-Za-z])\)|\[([A-Za-z])\]|\*\*([A-Za-z])\*\*|(?<![A-Za-z0-9(])([A-Z])\)"
                               r"|^\s*([A-Z])[.:](?:\s|$)", re.MULTILINE)
_BARE_LETTER = re.compile(r"(?<![A-Za-z0-9'’])([A-Z])(?![A-Za-z0-9'’])")


def _is_article(text: str, end: int, letter: str) -> bool:
    """Return whether the letter ending at ``end`` reads as the word "a"/"A"/"I" before another word."""
    following = re.match(r"\s+([a-z]+)", text[end:])
    # "A good answer" is an article; "A and B", "A is correct" name option A.
    return letter in "aAI" and following is not None and following.group(1) not in _AFTER_LETTER


def _mcq_letter(text: str, choices: Sequence[str] | Mapping[str, str] | None = None) -> str | None:
    """Return the chosen option letter in ``text``, or None when there is none or it is ambiguous."""
    letters, texts = _choice_letters(choices)
    stripped = text.strip().strip("*_`\"' ").strip()
    whole = re.fullmatch(r"[\(\[]?([A-Za-z])[\)\]]?[.:]?", stripped)
    if whole and whole.group(1).upper() in letters:
        return whole.group(1).upper()
    for match in reversed(list(_MARKED_LETTER.finditer(text))):
        letter = match.group(1)
        if letter.upper() in letters and not _is_article(text, match.end(1), letter):
            if letter.islower() and not re.match(r"[\)\]]|\s*(?:$|[.,;:!\n])", text[match.end(1):]):
                continue  # "the answer is b" is fine, "the answer is a bit" is not
            return letter.upper()
    for match in reversed(list(_DECORATED_LETTER.finditer(text))):
        letter = next(g for g in match.groups() if g)
        if letter.upper() in letters:
            return letter.upper()
    if texts:
        by_text = _mcq_by_text(text, texts)
        if by_text is not None:
            return by_text
    bare = {m.group(1) for m in _BARE_LETTER.finditer(text)
            if m.group(1) in letters and not _is_article(text, m.end(1), m.group(1))}
    return bare.pop() if len(bare) == 1 else None


def _mcq_by_text(text: str, texts: Mapping[str, str]) -> str | None:
    """Return the letter whose option text the answer is (or uniquely contains)."""
    answer = _squad_normalise(text)
    if not answer:
        return None
    options = {letter: _squad_normalise(option) for letter, option in texts.items()}
    exact = [letter for letter, option in options.items() if option and option == answer]
    if len(exact) == 1:
        return exact[0]
    inside = [letter for letter, option in options.items()
              if option and re.search(rf"(?<!\w){re.escape(option)}(?!\w)", answer)]
    # When one option's text contains another's ("red" and "dark red"), the longer one is meant.
    inside = [a for a in inside if not any(a != b and options[a] in options[b] for b in inside)]
    return inside[0] if len(inside) == 1 else None


def _normalise_mcq(answer: str, *, choices: Sequence[str] | Mapping[str, str] | None = None,
                   **_: Any) -> str | None:
    """Return the option letter of an answer: "(b)", "B.", "**B**", "Answer: B) text" -> "B"."""
    return _mcq_letter(answer, choices)


@register_grader("mcq", description="Multiple choice: the chosen letter equals the gold letter.",
                 options=("choices",))
def grade_mcq(response: str, gold: str, *, choices: Sequence[str] | Mapping[str, str] | None = None,
              **_: Any) -> Grade:
    """Grade a multiple-choice response by its option letter."""
    gold_letter = _mcq_letter(gold, choices)
    if gold_letter is None:
        return Grade(False, 0.0, None, f"gold {_short(gold)} is not an option letter")
    answer, where = _response_answer(response)
    letter = _mcq_letter(answer, choices) if answer is not None else None
    if letter is None:
        # "B\n\nExplanation: ..." : the letter is on a line of its own, not on the last line.
        letter = _mcq_letter(response, choices)
        where = "letter in the response"
    if letter is None:
        return Grade(False, 0.0, None, f"no option letter found ({where}: {_short(answer)})")
    correct = letter == gold_letter
    return Grade(correct, float(correct), letter,
                 f"{where} {letter} {'equals' if correct else 'does not equal'} gold {gold_letter}")


# ---------------------------------------------------------------------------------------------
# Labels, QA, exact
# ---------------------------------------------------------------------------------------------


def _label_text(text: str) -> str:
    """Lower-case ``text`` and turn punctuation into spaces."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", text.lower()).split())


def _normalise_label(answer: str, *, labels: Sequence[str] | None = None, **_: Any) -> str | None:
    """Return the label an answer names (case and punctuation ignored), None when none or several."""
    text = _label_text(answer)
    if not labels:
        return text or None
    known = {_label_text(label) for label in labels} - {""}
    if text in known:
        return text
    found = [label for label in known if re.search(rf"(?<!\w){re.escape(label)}(?!\w)", text)]
    # "not entailment" also contains "entailment": the longer label is the one named.
    found = [a for a in found if not any(a != b and re.search(rf"(?<!\w){re.escape(a)}(?!\w)", b) for b in found)]
    return found[0] if len(found) == 1 else None


@register_grader("label", description="Classification: the named label equals the gold label.",
                 options=("labels",))
def grade_label(response: str, gold: str, *, labels: Sequence[str] | None = None, **_: Any) -> Grade:
    """Grade a classification response by its label."""
    gold_label = _normalise_label(gold, labels=labels) or _label_text(gold)
    answer, where = _response_answer(response)
    label = _normalise_label(answer, labels=labels) if answer else None
    if label is None and labels:
        label = _normalise_label(response, labels=labels)
        where = "label in the response"
    if label is None:
        return Grade(False, 0.0, None, f"no known label found ({where}: {_short(answer)})")
    correct = label == gold_label
    return Grade(correct, float(correct), label,
                 f"{where} {label!r} {'equals' if correct else 'does not equal'} gold {gold_label!r}")


def _squad_normalise(text: str) -> str:
    """Lower-case, drop punctuation and articles, squeeze whitespace (SQuAD's answer normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(prediction: str, gold: str) -> float:
    """Return SQuAD's token F1 between two normalised answers."""
    predicted, expected = prediction.split(), gold.split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def _gold_aliases(gold: str) -> list[str]:
    """Return the accepted answers: a JSON list of strings in ``gold``, else ``gold`` itself."""
    text = gold.strip()
    if text.startswith("["):
        try:
            aliases = json.loads(text)
        except ValueError:
            aliases = None
        if isinstance(aliases, list) and aliases and all(isinstance(a, str) for a in aliases):
            return aliases
    return [text]


def _normalise_qa(answer: str, **_: Any) -> str | None:
    """Return the SQuAD-normalised answer."""
    return _squad_normalise(answer) or None


@register_grader("qa", description="Short-answer QA: score is SQuAD token F1; correct is exact match.",
                 score="f1")
def grade_qa(response: str, gold: str, **_: Any) -> Grade:
    """Grade a short answer by exact match and token F1 against the best gold alias."""
    answer, where = _response_answer(response)
    normalised = _squad_normalise(answer) if answer is not None else ""
    if not normalised:
        return Grade(False, 0.0, None, f"no answer found ({where}: {_short(answer)})")
    golds = [_squad_normalise(alias) for alias in _gold_aliases(gold)]
    best_f1, best_gold = max((_token_f1(normalised, g), g) for g in golds)
    exact = normalised in golds
    verdict = "exactly matches" if exact else f"has token F1 {best_f1:.2f} with"
    return Grade(exact, 1.0 if exact else best_f1, normalised, f"{where} {_short(normalised)!r} {verdict} "
                 f"gold {_short(best_gold)!r}")


def _canonical_literal(value: Any, depth: int = 0) -> str:
    """Return a canonical text for a Python literal: sets and dicts sorted, strings single-quoted."""
    if depth > 100:
        raise ValueError("literal nested too deeply")
    if isinstance(value, dict):
        items = sorted(f"{_canonical_literal(k, depth + 1)}: {_canonical_literal(v, depth + 1)}"
                       for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, (set, frozenset)):
        items = sorted(_canonical_literal(v, depth + 1) for v in value)
        body = "{" + ", ".join(items) + "}" if items else "()"
        return body if isinstance(value, set) and items else f"{type(value).__name__}({body if items else ''})"
    if isinstance(value, list):
        return "[" + ", ".join(_canonical_literal(v, depth + 1) for v in value) + "]"
    if isinstance(value, tuple):
        inner = ", ".join(_canonical_literal(v, depth + 1) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _exact_key(text: str) -> str:
    """Return the canonical text of an answer; see ``_normalise_exact``."""
    fenced = re.fullmatch(r"\s*(?:```[\w+-]*\n?(.*?)\n?```|`([^`]*)`)\s*", text, re.DOTALL)
    if fenced:
        text = fenced.group(1) if fenced.group(1) is not None else fenced.group(2)
    if text == text.strip() and len(text) <= 20_000:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "1abc" warns about an invalid decimal literal
                value = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            pass
        else:
            # "6,8,8" is text a model wrote without quotes, and "(1, 2), (3, 4)" would not survive as the
            # right side of CRUXEval's assert: only a parenthesised tuple is a tuple.
            if not (isinstance(value, tuple) and value and not _parenthesised(text)):
                return _canonical_literal(value)
    # Any other text is a string. Surrounding spaces only survive in a JSON string, where they are part
    # of the value; a quote at either end is the model's attempt at a literal ("'148: b'148''").
    if text == text.strip():
        text = re.sub(r"^['\"]|['\"]$", "", text) if len(text) > 1 else text
    return repr(text)


def _parenthesised(text: str) -> bool:
    """Return whether a tuple literal's own brackets enclose it: "(1, 2)" yes, "(1, 2), (3, 4)" no."""
    try:
        node = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return isinstance(node, ast.Tuple) and bool(node.elts) and node.elts[0].col_offset > node.col_offset


def _normalise_exact(answer: str, **_: Any) -> str | None:
    """Return a canonical text: Python literals by value (repr-style), any other text as a string literal."""
    return _exact_key(answer)


def _exact_equal(key: str, gold_key: str) -> bool:
    """Return whether an answer key matches a gold key, a gold string also matching its bare text."""
    if key == gold_key:
        return True
    # A JSON answer field cannot tell 123314 from '123314': when the gold is a string, the answer's
    # canonical text standing for that string is accepted ("123314", "True", "[1, 2]" for '[1, 2]').
    if gold_key[:1] in ("'", '"') and key[:1] not in ("'", '"'):
        try:
            return bool(ast.literal_eval(gold_key) == key)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return False
    return False


@register_grader("exact", description="Exact match after normalisation; Python literals compare by value.")
def grade_exact(response: str, gold: str, **_: Any) -> Grade:
    """Grade by equality of the normalised answer and gold."""
    found = extract_answer(response)
    if found.answer is None:
        return Grade(False, 0.0, None, "no answer found in the response")
    where = _response_answer(response)[1]
    # An empty JSON string is a real answer here: CRUXEval outputs can be ''.
    key, gold_key = _exact_key(found.answer), _exact_key(gold.strip())
    correct = _exact_equal(key, gold_key)
    return Grade(correct, float(correct), key,
                 f"{where} {_short(key)} {'equals' if correct else 'does not equal'} gold {_short(gold_key)}")


# ---------------------------------------------------------------------------------------------
# Code
# ---------------------------------------------------------------------------------------------

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
                 options=("tests", "entry_point", "prompt", "timeout_s", "memory_mb", "allow_weak_sandbox"))
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
    return Grade(False, 0.0, program, f"tests {result.status}: {_short(detail, 200)}")


def _last_error_line(stderr: str) -> str:
    """Return the last non-empty line of a traceback, e.g. "AssertionError"."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


_NORMALISERS: dict[str, Callable[..., str | None]] = {
    "math": _normalise_math,
    "mcq": _normalise_mcq,
    "code": _normalise_code,
    "label": _normalise_label,
    "qa": _normalise_qa,
    "exact": _normalise_exact,
}
