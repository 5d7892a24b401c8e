"""The ids a BERT WordPiece tokenizer gives a plain-ASCII text, without the per-call cost of the full tokenizer.

The static embedder (``minilm-static``) costs a tokenizer call and a small gather per query. With the
``tokenizers`` library the call is most of it: about 150 µs for a 300-character query on the benchmark machines
(docs/BENCHMARKS.md), against some 20 µs for the rest. For the texts that are most queries, printable ASCII with
tabs and newlines, BERT's normaliser and pre-tokeniser reduce to "lowercase; split into runs of letters and
digits and single punctuation marks", and WordPiece maps each such word on its own. So ``BertIds`` splits with
one regular expression and looks each word up in a cache, asking the tokenizer's WordPiece model only for words
it has not seen. Anything else (other characters, or text holding one of the tokenizer's added tokens such as
``[MASK]``, which it matches before normalising) goes to the full tokenizer, so the ids are always the same as
``tokenizer.encode(text, add_special_tokens=False).ids`` truncated to ``max_tokens``; the tests check that on
real queries and on generated text.
"""
from __future__ import annotations

import re
from typing import Any

__all__ = ["BertIds"]

# Outside this set BERT's normaliser has work to do (controls dropped, accents stripped, CJK spaced, Unicode
# whitespace and punctuation); such text takes the full tokenizer.
_NOT_PLAIN = re.compile(r"[^\x20-\x7e\t\n\r]")
# Within it, after lowercasing, the pre-tokeniser's words: letters and digits together, every other visible
# character (all ASCII punctuation to BERT) alone; spaces, tabs and newlines separate.
_WORDS = re.compile(r"[a-z0-9]+|[^a-z0-9 \t\n\r]")


class BertIds:
    """``ids(text)``: a BERT tokenizer's ids of ``text`` without special tokens, at most ``max_tokens`` of them.

    ``tokenizer`` is a ``tokenizers.Tokenizer`` with a BertNormalizer (lowercase), a BertPreTokenizer and a
    WordPiece model, such as all-MiniLM-L6-v2's. Safe to share between threads.
    """

    def __init__(self, tokenizer: Any, *, max_tokens: int, cache_size: int = 100_000) -> None:
        self._tokenizer = tokenizer
        self._wordpiece = tokenizer.model
        self.max_tokens = max_tokens
        self._cache: dict[str, list[int]] = {}
        self._cache_size = cache_size
        # Lowercased and looked for in the lowercased text: a match either way sends the text to the tokenizer.
        self._added = tuple(token.content.lower() for token in tokenizer.get_added_tokens_decoder().values())
        self.fast_calls = 0
        self.full_calls = 0

    def ids(self, text: str) -> list[int]:
        lowered = text.lower()
        if _NOT_PLAIN.search(text) is not None or any(token in lowered for token in self._added):
            self.full_calls += 1
            return list(self._tokenizer.encode(text, add_special_tokens=False).ids[:self.max_tokens])
        self.fast_calls += 1
        cache = self._cache
        out: list[int] = []
        for word in _WORDS.findall(lowered):
            pieces = cache.get(word)
            if pieces is None:
                pieces = [token.id for token in self._wordpiece.tokenize(word)]
                if len(cache) >= self._cache_size:
                    cache.clear()  # rare: a worker that has seen this many distinct words starts over
                cache[word] = pieces
            out.extend(pieces)
            if len(out) >= self.max_tokens:
                return out[:self.max_tokens]
        return out
