"""Grade classification answers by the label they name."""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from evaluation.core.grading.extraction import compared, response_answer, short
from evaluation.core.grading.registry import Grade, register_grader


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
                 normalise=_normalise_label, options=("labels",), query_options=("labels",))
def grade_label(response: str, gold: str, *, labels: Sequence[str] | None = None, **_: Any) -> Grade:
    """Grade a classification response by its label."""
    gold_label = _normalise_label(gold, labels=labels) or _label_text(gold)
    answer, where = response_answer(response)
    label = _normalise_label(answer, labels=labels) if answer else None
    if label is None and labels:
        label = _normalise_label(response, labels=labels)
        where = "label in the response"
    if label is None:
        return Grade(False, 0.0, None, f"no known label found ({where}: {short(answer)})")
    return compared(label == gold_label, label, where=where, shown=repr(label), gold=repr(gold_label))
