"""Grade model responses against gold answers, and normalise answers so that equal ones vote together.

One module per task type registers its grader with ``register_grader`` (``registry.py``, the only table):
``math``, ``mcq``, ``code``, ``label``, ``qa`` and ``exact``, imported below in that order, which is the
order of ``TASK_TYPES``. ``extraction.py`` finds the final answer in a response; ``math_pool.py`` runs
math-verify in worker processes under a time limit that holds in any thread.

Each task type has one normaliser (``normalise_answer``) that turns an extracted answer into a canonical
key. Grading decides from the keys, so two answers with the same key grade the same, and voting
(``routing.core.voting``) uses the same normaliser through ``normaliser``.
docs/GRADING.md has the rules of every task type.
"""
from __future__ import annotations

# Each module registers its grader when imported; this order is the order of TASK_TYPES.
from evaluation.core.grading import math  # noqa: F401  # isort: skip
from evaluation.core.grading import mcq  # noqa: F401  # isort: skip
from evaluation.core.grading import code  # noqa: F401  # isort: skip
from evaluation.core.grading import label  # noqa: F401  # isort: skip
from evaluation.core.grading import qa  # noqa: F401  # isort: skip
from evaluation.core.grading import exact  # noqa: F401  # isort: skip
from evaluation.core.grading.extraction import Extraction, extract_answer
from evaluation.core.grading.registry import (
    GRADERS,
    QUERY_OPTIONS,
    TASK_TYPES,
    Grade,
    Grader,
    GraderFunction,
    GradingUnavailable,
    grade,
    grader_options,
    is_free_text,
    normalise_answer,
    normaliser,
    register_grader,
    unregister_grader,
)

__all__ = [
    "GRADERS", "QUERY_OPTIONS", "TASK_TYPES", "Extraction", "Grade", "Grader", "GraderFunction", "GradingUnavailable",
    "extract_answer", "grade", "grader_options", "is_free_text", "normalise_answer", "normaliser", "register_grader",
    "unregister_grader",
]
