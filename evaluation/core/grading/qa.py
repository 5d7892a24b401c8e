"""Grade short free-text answers: exact match after SQuAD normalisation, scored by token F1."""
from __future__ import annotations

import json
from collections import Counter
from typing import Any

from evaluation.core.grading.extraction import response_answer, short, squad_normalise
from evaluation.core.grading.registry import Grade, register_grader


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
    return squad_normalise(answer) or None


@register_grader("qa", description="Short-answer QA: score is SQuAD token F1; correct is exact match.",
                 normalise=_normalise_qa, score="f1", free_text=True)
def grade_qa(response: str, gold: str, **_: Any) -> Grade:
    """Grade a short answer by exact match and token F1 against the best gold alias."""
    answer, where = response_answer(response)
    normalised = squad_normalise(answer) if answer is not None else ""
    if not normalised:
        return Grade(False, 0.0, None, f"no answer found ({where}: {short(answer)})")
    golds = [squad_normalise(alias) for alias in _gold_aliases(gold)]
    best_f1, best_gold = max((_token_f1(normalised, g), g) for g in golds)
    exact = normalised in golds
    verdict = "exactly matches" if exact else f"has token F1 {best_f1:.2f} with"
    return Grade(exact, 1.0 if exact else best_f1, normalised, f"{where} {short(normalised)!r} {verdict} "
                 f"gold {short(best_gold)!r}")
