"""Grade maths answers by equivalence: plain numbers as exact rationals, the rest through math-verify.

Answers are cleaned first (delimiters, currency, units, %, spacing), then keyed: a plain number by its
exact value ("1/2"), anything else by the sympy text a worker of ``math_pool`` returns.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from evaluation.core.grading.extraction import PROSE_WORD, response_answer, short, unbox
from evaluation.core.grading.math_pool import EQUAL_CACHE, KEY_CACHE, WorkerError, WorkerTimeout, math_pool
from evaluation.core.grading.registry import Grade, register_grader

_MAX_MATH_CHARS = 1000  # longer "answers" are runaway text, not final answers: never parsed
_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+")
_FRACTION = re.compile(r"([+-]?\d+)\s*/\s*([+-]?\d+)")
_LATEX_FRACTION = re.compile(r"([+-]?)\\frac\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))")
# Unit words after a number, a closing bracket or \pi: "5 cm", "(5 + 10) minutes", "2\pi radians".
_UNIT_TAIL = re.compile(r"(?:(?<=[\d)}])|(?<=\\pi))\s*((?:[A-Za-z]{2,}\.?(?:\s+|/|-|$))+)$")
_MATH_NAMES = {"pi", "sqrt", "frac", "cdot", "times", "mod", "pmod", "infty", "infinity", "sin", "cos", "tan",
               "log", "ln", "exp", "sec", "csc", "cot", "arcsin", "arccos", "arctan", "oo", "inf", "nan"}
_NOT_UNITS = _MATH_NAMES | {"and", "or", "to", "plus", "minus", "over", "divided", "by", "of", "is", "are", "equals"}
_CURRENCY_PREFIX = re.compile(r"^(?:US\s*\$|USD|Rs\.?|INR|EUR|GBP|€|£|¥|₹)\s*", re.IGNORECASE)
_ASSIGNED_NAME = re.compile(r"[A-Za-z]\w*(?:\([^()=]*\))?")
_UNICODE_MATH = {"√": "\\sqrt ", "π": "\\pi ", "×": "\\times ", "·": "\\cdot ", "÷": "/", "−": "-", "–": "-",
                 "∞": "\\infty ", "≤": "\\le ", "≥": "\\ge ", "²": "^2", "³": "^3", "°": ""}
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})\s*(?:[ap]\.?\s?m\.?)?", re.IGNORECASE)
_WORDS = re.compile(r"[A-Za-z]{2,}(?:[ '-][A-Za-z]+)*")
_TEXT_BLOCK = re.compile(r"\\(?:text|textbf|mbox|mathrm)\s*\{([^{}]*)\}")


def _gold_text(gold: str) -> str:
    """Return the final answer in a gold that may be a worked solution."""
    text = gold.strip()
    if "####" in text:  # GSM8K solution: "... #### 20,000"
        return text.rsplit("####", 1)[1].strip()
    if text.startswith("#"):  # ZeroEval's GSM gold: "# 18"
        return text.lstrip("#").strip()
    return unbox(text)  # MATH solution: "... \boxed{\frac{1}{2}}"


def _clean_math(text: str) -> str:
    """Strip what never changes a maths answer's value: delimiters, currency, units, % and spacing."""
    s = _strip_markup(text)
    prose = _prose_value(s)
    if prose is not None:
        s = _strip_markup(prose)
    return _strip_units(s)


def _strip_markup(text: str) -> str:
    """Drop delimiters, LaTeX spacing, degrees, %, currency and ``\\text`` units; spell unicode maths in LaTeX."""
    s = unbox(text.strip())
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
    words = [w for w in PROSE_WORD.findall(text) if w.lower() not in _MATH_NAMES]
    if len(words) < 2:
        return None
    sentences = [part for part in re.split(r"(?<=[.!?;])\s+", text) if re.search(r"\d", part)]
    if not sentences:
        return None  # "no solution": text, compared as text
    sentence = sentences[-1]
    if "=" in sentence and re.search(r"\d", sentence.rsplit("=", 1)[1]):
        sentence = sentence.rsplit("=", 1)[1]  # "... = $400 + $60 = $460": the result comes last
    sentence = _strip_units(sentence.strip().rstrip(".!?;,"))
    pieces = [piece for piece in PROSE_WORD.split(sentence) if re.search(r"\d", piece)]
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
    if len(parts) > 1 and number_value(_strip_units(parts[-1])) is not None and (
            _ASSIGNED_NAME.fullmatch(parts[-2].strip()) or not re.search(r"[A-Za-z]", parts[-2])):
        # "x = 5", "f(3) = 10", "20 - 12 = 8": the value after the last "="; "x^2 + y^2 = 25" stays whole.
        s = _strip_units(parts[-1])
    tail = _UNIT_TAIL.search(s)
    if tail and tail.start() > 0 and not any(
            w.lower().rstrip(".") in _NOT_UNITS for w in re.split(r"[\s/-]+", tail.group(1)) if w):
        s = s[:tail.start()].rstrip()  # "18 dollars", "5 cm", "1/2 cup", "(5 + 10) minutes"
    return " ".join(s.split())


def number_value(text: str) -> Fraction | None:
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



def number_key(value: Fraction) -> str:
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
    value = number_value(cleaned)
    if value is not None:
        return _MathKey("number", number_key(value))
    if (_WORDS.fullmatch(cleaned) and cleaned.lower() not in _MATH_NAMES) or _CLOCK.fullmatch(cleaned):
        # "Monday", "Devon": math-verify would read a product of single-letter symbols.
        return _MathKey("text", cleaned.lower())
    if len([w for w in PROSE_WORD.findall(cleaned) if w.lower() not in _MATH_NAMES]) >= 2:
        return _MathKey("text", cleaned)  # a sentence without a number in it: no maths to compare
    if len(cleaned) > _MAX_MATH_CHARS:
        return _MathKey("text", cleaned)
    cached: _MathKey | None = KEY_CACHE.get(cleaned)
    if cached is not None:
        return cached
    try:
        reply = math_pool().call({"op": "key", "text": cleaned}, timeout_s)
    except WorkerTimeout:
        return _MathKey("timeout", cleaned)
    except WorkerError as exc:
        return _MathKey("error", f"{cleaned} ({exc})")
    result = _MathKey(str(reply["kind"]), str(reply["key"]))
    KEY_CACHE.put(cleaned, result)
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
                 normalise=_normalise_math, options=("timeout_s",))
def grade_math(response: str, gold: str, *, timeout_s: float = 5.0, **_: Any) -> Grade:
    """Grade a maths answer by equivalence with the gold, under ``timeout_s``."""
    deadline = time.monotonic() + float(timeout_s)
    answer, where = response_answer(response)
    if answer is None:
        return Grade(False, 0.0, None, "no answer found in the response")
    cleaned_answer, cleaned_gold = _clean_math(answer), _clean_math(_gold_text(gold))
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
            return Grade(False, 0.0, cleaned_answer, f"could not read the {side}: {short(key.key)}")
    shown = f"{where} {short(a.key)}"
    if a.key == g.key:
        return Grade(True, 1.0, a.key, f"{shown} equals gold {short(g.key)}")
    if a.kind == "number" and g.kind == "number":
        equal = _numbers_equal(Fraction(a.key), Fraction(g.key))
    elif a.kind == "text" or g.kind == "text":
        equal = False  # text that is not maths only matches itself
    else:
        pair = (g.kind, g.key, a.kind, a.key)
        cached = EQUAL_CACHE.get(pair)
        if cached is None:
            try:
                reply = math_pool().call({"op": "equal", "gold": [g.kind, g.key, cleaned_gold],
                                           "answer": [a.kind, a.key, cleaned_answer]},
                                          max(deadline - time.monotonic(), 0.01))
            except WorkerTimeout:
                return Grade(False, 0.0, a.key, f"timed out after {timeout_s}s comparing {shown} with gold")
            except WorkerError as exc:
                return Grade(False, 0.0, a.key, f"could not compare {shown} with gold: {exc}")
            cached = bool(reply["equal"])
            EQUAL_CACHE.put(pair, cached)
        equal = cached
    verdict = "equals" if equal else "does not equal"
    return Grade(equal, 1.0 if equal else 0.0, a.key, f"{shown} {verdict} gold {short(g.key)}")
