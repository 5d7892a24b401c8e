"""Small math datasets ("What is 2 + 2?") and models nobody serves, for evaluation tests that answer with fakes."""
from __future__ import annotations

from typing import Any

from evaluation.models import Dataset, LanguageModel, Query

UNSERVED_URL = "http://127.0.0.1:9/v1"  # the discard port: nothing answers there


def make_math_dataset(n: int = 6, *, name: str = "arith", text: str = "What is {i} + {i}?", times: int = 2,
                      split: str = "train", test: int = 0) -> Dataset:
    """A dataset of ``n`` math queries q0, q1, ...: query i asks ``text.format(i=i)``, its gold answer is
    ``times * i``; the last ``test`` queries are in the test split, the others in ``split``."""
    dataset = Dataset.objects.create(name=name, split_seed=1)
    for i in range(n):
        Query.objects.create(dataset=dataset, external_id=f"q{i}", text=text.format(i=i), text_hash=f"h{i}",
                             gold=str(times * i), task_type="math", split="test" if i >= n - test else split,
                             split_source="file")
    return dataset


def make_unserved_model(name: str = "m1", *, max_concurrency: int, **fields: Any) -> LanguageModel:
    """A language model whose endpoint (unless ``base_url`` is given) answers nothing: the tests pass fake clients."""
    fields.setdefault("base_url", UNSERVED_URL)
    return LanguageModel.objects.create(name=name, max_concurrency=max_concurrency, **fields)


def operand(request: Any) -> int:
    """The i of the query "What is i + i?" that a fake client's request asks."""
    return int(request.messages[0]["content"].split("What is ")[1].split(" +")[0])


def right_for_even(request: Any, i: int) -> str:
    """A fake client's reply: correct for even operands and wrong for odd ones."""
    x = operand(request)
    return f"so \\boxed{{{2 * x if x % 2 == 0 else 2 * x + 1}}}"
