"""The fast WordPiece ids of the static embedder's serving path equal the tokenizer's. Runs with `-p no:django`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing.core.embedding import MINILM_STATIC_MAX_TOKENS, minilm_tokenizer
from routing.core.wordpiece import BertIds

SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return minilm_tokenizer(MINILM_STATIC_MAX_TOKENS)


def reference(tokenizer: Any, text: str, limit: int = MINILM_STATIC_MAX_TOKENS) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False).ids[:limit])


@pytest.mark.parametrize("source", ["llmrouter", "zeroeval"])
def test_same_ids_as_the_tokenizer_on_every_real_query(tokenizer: Any, source: str) -> None:
    path = SHARED_DATA / source / "records.jsonl"
    assert path.exists(), f"{path} is missing: the tests need ../shared/data beside the repository"
    queries = {json.loads(line)["query"] for line in path.open(encoding="utf-8")}
    ids = BertIds(tokenizer, max_tokens=MINILM_STATIC_MAX_TOKENS)
    wrong = [q[:80] for q in queries if ids.ids(q) != reference(tokenizer, q)]
    assert wrong == []
    # Most real queries take the fast path; the rest (accents, curly quotes, ...) the tokenizer itself.
    assert ids.fast_calls > 0.8 * len(queries) and ids.full_calls > 0


_ASCII = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("\t\n\r"),
                 max_size=300)
_ANY = st.text(max_size=120)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_ASCII | _ANY | st.builds(lambda a, b: a + b, _ASCII, _ANY))
def test_same_ids_on_generated_text(tokenizer: Any, text: str) -> None:
    assert BertIds(tokenizer, max_tokens=MINILM_STATIC_MAX_TOKENS).ids(text) == reference(tokenizer, text)


@pytest.mark.parametrize("text", [
    "", "   ", "\t\n", "Hello, World!", "snake_case and CamelCase99 x^2+y_1=3.5e-7",
    "a" * 101 + " word",  # past WordPiece's 100 characters a word is [UNK]
    "unaffable antidisestablishmentarianism", "[MASK] is [cls] not [UNK]?",  # added tokens: the tokenizer's way
    "naïve café \u00a0 “quoted” 中文 \x00 \x07 \u200b",  # non-ASCII and controls: the tokenizer's way
])
def test_same_ids_on_edge_cases(tokenizer: Any, text: str) -> None:
    assert BertIds(tokenizer, max_tokens=MINILM_STATIC_MAX_TOKENS).ids(text) == reference(tokenizer, text)


def test_added_tokens_go_to_the_tokenizer(tokenizer: Any) -> None:
    ids = BertIds(tokenizer, max_tokens=MINILM_STATIC_MAX_TOKENS)
    assert tokenizer.token_to_id("[MASK]") in ids.ids("fill the [MASK] here")
    assert ids.full_calls == 1 and ids.fast_calls == 0


def test_truncates_and_survives_a_full_cache(tokenizer: Any) -> None:
    text = " ".join(f"word{i} unbelievable" for i in range(200))
    ids = BertIds(tokenizer, max_tokens=50, cache_size=7)
    assert ids.ids(text) == reference(tokenizer, text, 50) and len(ids.ids(text)) == 50
    assert ids.ids(text) == reference(tokenizer, text, 50)  # again, with the cache cleared on the way
    assert ids.fast_calls == 3
