"""Grade multiple-choice answers by their option letter."""
from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from evaluation.core.grading.extraction import compared, response_answer, short, squad_normalise
from evaluation.core.grading.registry import Grade, register_grader


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
    answer = squad_normalise(text)
    if not answer:
        return None
    options = {letter: squad_normalise(option) for letter, option in texts.items()}
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
                 normalise=_normalise_mcq, options=("choices",), query_options=("choices",))
def grade_mcq(response: str, gold: str, *, choices: Sequence[str] | Mapping[str, str] | None = None,
              **_: Any) -> Grade:
    """Grade a multiple-choice response by its option letter."""
    gold_letter = _mcq_letter(gold, choices)
    if gold_letter is None:
        return Grade(False, 0.0, None, f"gold {short(gold)} is not an option letter")
    answer, where = response_answer(response)
    letter = _mcq_letter(answer, choices) if answer is not None else None
    if letter is None:
        # "B\n\nExplanation: ..." : the letter is on a line of its own, not on the last line.
        letter = _mcq_letter(response, choices)
        where = "letter in the response"
    if letter is None:
        return Grade(False, 0.0, None, f"no option letter found ({where}: {short(answer)})")
    return compared(letter == gold_letter, letter, where=where, shown=letter, gold=gold_letter)
