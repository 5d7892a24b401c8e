"""Find the final answer in a model's response.

``extract_answer`` tries these in order and stops at the first that finds something:

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

Also the small helpers every grader shares: where an answer came from, a reason-sized excerpt, and SQuAD's
answer normalisation.
"""
from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass

from evaluation.core.grading.registry import Grade


@dataclass(frozen=True)
class Extraction:
    """The final answer found in a response and the rule that found it."""

    answer: str | None
    method: str  # "boxed", "json", "answer_colon", "the_answer_is", "last_line", "none"


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
PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}(?![A-Za-z])")


def extract_answer(response: str) -> Extraction:
    """Return the final answer in ``response`` and the rule that found it."""
    if not isinstance(response, str) or not response.strip():
        return Extraction(None, "none")
    found = _json_answer(response)
    if found is not None:
        # Kept verbatim: in a Python-literal answer ("'  7  '") even the spaces count.
        return Extraction(unbox(found.strip()) if _BOX.search(found) else found, "json")
    boxed = _last_boxed(response)
    if boxed is not None:
        return Extraction(boxed.strip(), "boxed")
    for method, pattern in (("answer_colon", _ANSWER_COLON), ("the_answer_is", _ANSWER_IS)):
        found = _last_answer_phrase(response, pattern, method)
        if found:
            return Extraction(found, method)
    lines = [line for line in response.splitlines() if line.strip() and line.strip() not in _NOT_ANSWER_LINES]
    if lines and len(lines[-1]) <= _MAX_LAST_LINE and not _JSON_KEY_LINE.match(lines[-1]) and not (
            len(PROSE_WORD.findall(lines[-1])) >= 8 and re.search(r"[A-Za-z,;:]\s*$", lines[-1])):
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


def unbox(text: str) -> str:
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
    return unbox(text)


def response_answer(response: str) -> tuple[str | None, str]:
    """Return the extracted answer and a short description of where it came from."""
    found = extract_answer(response)
    where = {"json": "JSON answer", "boxed": "boxed answer", "answer_colon": "'Answer:' answer",
             "the_answer_is": "'the answer is' answer", "last_line": "last-line answer"}.get(found.method, "answer")
    return found.answer, where


def short(text: str | None, limit: int = 60) -> str:
    """Return ``text`` cut to ``limit`` characters for a reason string."""
    if text is None:
        return "nothing"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def compared(correct: bool, key: str, *, where: str, shown: str, gold: str) -> Grade:
    """Return the grade of an answer ``key`` that equals the gold (``correct``) or not, with its reason."""
    verdict = "equals" if correct else "does not equal"
    return Grade(correct, float(correct), key, f"{where} {shown} {verdict} gold {gold}")


def squad_normalise(text: str) -> str:
    """Lower-case, drop punctuation and articles, squeeze whitespace (SQuAD's answer normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())
