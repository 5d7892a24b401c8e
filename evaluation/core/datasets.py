"""Parse and validate dataset files (JSON Lines, CSV, and the records format); split queries.

Pure Python: the platform's import service and the offline tools share it. Every problem is
reported with the line it is on, and a file with any problem yields no records at all.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from evaluation.core.grading import TASK_TYPES  # the graders' registry: one task type per grader

SPLITS = ("train", "test")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"
_NAME_RE = re.compile(NAME_PATTERN)
MAX_ID_LENGTH = 255
MAX_DATASET_NAME_LENGTH = 100
MAX_MODEL_NAME_LENGTH = 200
# A CSV with more columns is refused at its header: 3 columns per model (score, response, cost) leave room for
# over 3,000 models. Every check of the header and the rows takes time linear in the number of columns.
MAX_CSV_COLUMNS = 10_000
# A JSON Lines record nested deeper is refused (records are two levels deep; metadata may add a few).
MAX_RECORD_DEPTH = 32

# Column names that mean "the query" / "the gold answer", first match wins.
QUERY_ALIASES = ("query", "question", "prompt")
GOLD_ALIASES = ("gold", "answer")
KNOWN_FIELDS = {"id", "dataset", "gold", "task_type", "category", "split", "scores", "responses", "costs"}
KNOWN_FIELDS |= set(QUERY_ALIASES) | set(GOLD_ALIASES)
# CSV columns that carry one model's result: "score:MODEL" (or "scores.MODEL"), and so on.
_PER_MODEL_COLUMN = re.compile(r"^(scores?|responses?|costs?)[:.](.+)$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file, where it is, and what to do about it."""

    line: int  # 1-based line in the file; 0 for the file as a whole
    field: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        return f"{where}, {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message}


class DatasetFileError(ValueError):
    """The file cannot be imported; ``problems`` lists why, by line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        first = str(self.problems[0]) if self.problems else "invalid file"
        more = len(self.problems) - 1
        super().__init__(first + (f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""))


@dataclass(frozen=True)
class Record:
    """One validated query line, with any per-model results it carries."""

    line: int
    id: str
    id_given: bool
    dataset: str | None
    query: str
    gold: str = ""
    task_type: str = ""
    category: str = ""
    split: str | None = None
    scores: Mapping[str, float] = field(default_factory=dict)
    responses: Mapping[str, str] = field(default_factory=dict)
    costs: Mapping[str, float] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedFile:
    format: str  # "jsonl" or "csv"
    records: tuple[Record, ...]

    @property
    def model_names(self) -> list[str]:
        names: set[str] = set()
        for record in self.records:
            names.update(record.scores, record.responses, record.costs)
        return sorted(names)


def is_valid_name(name: str) -> bool:
    """Tell whether ``name`` may name a dataset or a model."""
    return bool(_NAME_RE.match(name))


def text_hash(text: str) -> str:
    """Return the SHA-256 of a query text, the key for embedding caches and derived ids."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seeded_split(ids: Sequence[str], *, seed: int, test_fraction: float = 0.3) -> dict[str, str]:
    """Split ids into train and test: sort, shuffle with ``seed``, the first round(n * fraction) are test."""
    if not 0 <= test_fraction <= 1:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    order = sorted(set(ids))
    random.Random(seed).shuffle(order)
    n_test = round(len(order) * test_fraction)
    return {key: ("test" if i < n_test else "train") for i, key in enumerate(order)}


def parse_dataset_file(
    data: bytes,
    *,
    filename: str = "",
    max_bytes: int | None = None,
    max_problems: int = 50,
    progress: Callable[[int, int], None] | None = None,
) -> ParsedFile:
    """Decode, detect the format, and validate every line; raise DatasetFileError listing the problems."""
    if max_bytes is not None and len(data) > max_bytes:
        raise DatasetFileError(
            [Problem(0, "", f"the file is {_size(len(data))}, above the limit of {_size(max_bytes)}; split it")]
        )
    fmt = _format_from_name(filename)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetFileError(
            [Problem(line, "", f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); save the file as UTF-8")]
        ) from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise DatasetFileError([Problem(0, "", "the file is empty")])
    if "\x00" in text:
        raise DatasetFileError([Problem(text[: text.index("\x00")].count("\n") + 1, "", "binary data (NUL byte); "
                                        "expected JSON Lines or CSV text")])
    fmt = _sniff_format(text, fmt)
    total = text.count("\n") + 1
    collector = _Collector(max_problems)
    rows = _jsonl_rows(text, collector) if fmt == "jsonl" else _csv_rows(text, collector)
    records: list[Record] = []
    seen: dict[tuple[str | None, str], int] = {}
    for line, row in rows:
        record = _validate_row(line, row, collector)
        if record is not None:
            key = (record.dataset, record.id)
            if key in seen:
                what = f"id {record.id!r}" if record.id_given else "the same query text"
                collector.add(Problem(line, "id" if record.id_given else "query", f"{what} repeats line {seen[key]}"))
            else:
                seen[key] = line
                records.append(record)
        if progress is not None and line % 500 == 0:
            progress(line, total)
        if collector.full:
            break
    if collector.problems:
        raise DatasetFileError(collector.problems)
    if not records:
        raise DatasetFileError([Problem(0, "", "the file holds no queries")])
    if progress is not None:
        progress(total, total)
    return ParsedFile(format=fmt, records=tuple(records))


class _Collector:
    def __init__(self, limit: int) -> None:
        self.problems: list[Problem] = []
        self.limit = limit

    def add(self, problem: Problem) -> None:
        if len(self.problems) < self.limit:
            self.problems.append(problem)

    @property
    def full(self) -> bool:
        return len(self.problems) >= self.limit


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n} bytes"


def _format_from_name(filename: str) -> str | None:
    """Return the format the file name promises, None when it does not say; refuse other file types."""
    lower = filename.lower().rsplit("/", 1)[-1]
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lower.endswith((".csv", ".tsv")):
        return "csv"
    if "." in lower and not lower.endswith(".txt"):
        ext = lower.rsplit(".", 1)[-1]
        raise DatasetFileError([Problem(0, "", f"unsupported file type .{ext}; upload JSON Lines (.jsonl) or CSV (.csv)")])
    return None


def _sniff_format(text: str, from_name: str | None) -> str:
    first = text.lstrip()[:1]
    if first == "[":
        raise DatasetFileError([Problem(1, "", "this is a JSON array; expected JSON Lines (one JSON object per line)")])
    return from_name or ("jsonl" if first == "{" else "csv")


def _jsonl_rows(text: str, collector: _Collector) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            collector.add(Problem(number, "", f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        except RecursionError:
            collector.add(Problem(number, "", f"JSON nested more than {MAX_RECORD_DEPTH} levels deep"))
            continue
        if not isinstance(value, dict):
            collector.add(Problem(number, "", f"expected a JSON object, got {type(value).__name__}"))
            continue
        problem = _unstorable(raw, value)
        if problem:
            collector.add(Problem(number, "", problem))
            continue
        yield number, value


def _unstorable(raw: str, value: Any) -> str | None:
    """Say why a parsed line cannot be stored (nested too deep, a NUL character), or None."""
    if "\\u0000" not in raw and raw.count("{") + raw.count("[") <= MAX_RECORD_DEPTH:
        return None  # the common case, decided without walking the value
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:  # iterative: the value may be nested far deeper than Python's recursion limit
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "a NUL character (\\u0000), which cannot be stored; remove it"
        elif isinstance(item, (dict, list)):
            if depth > MAX_RECORD_DEPTH:
                return f"JSON nested more than {MAX_RECORD_DEPTH} levels deep"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None


def _csv_rows(text: str, collector: _Collector) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        dialect: Any = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    try:
        header = [h.strip() for h in next(reader)]
    except (StopIteration, csv.Error) as exc:
        raise DatasetFileError([Problem(1, "", f"cannot read a CSV header ({exc})")]) from None
    if len(header) > MAX_CSV_COLUMNS:
        raise DatasetFileError([Problem(1, "header", f"the header has {len(header):,} columns, above the limit of "
                                        f"{MAX_CSV_COLUMNS:,}; split the models' columns over several files")])
    lowered = [h.lower() for h in header]
    duplicates = sorted(h for h, n in Counter(lowered).items() if n > 1 and h)
    if duplicates:
        raise DatasetFileError([Problem(1, "header", f"duplicate column(s): {', '.join(duplicates)}")])
    if not any(alias in lowered for alias in QUERY_ALIASES):
        shown = ", ".join(repr(h) for h in header[:8])
        raise DatasetFileError([Problem(1, "header", f"no query column; the header has {shown}. Name the "
                                        f"column with the question 'query' (or {', '.join(QUERY_ALIASES[1:])})")])
    start = 2
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            collector.add(Problem(start, "", f"malformed CSV ({exc})"))
            return
        line, start = start, reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(header):
            collector.add(Problem(line, "", f"{len(cells)} cells but the header has {len(header)} columns"))
            continue
        row: dict[str, Any] = {}
        for original, name, cell in zip(header, lowered, cells):
            if cell.strip() == "" or not name:
                continue
            match = _PER_MODEL_COLUMN.match(name)
            if match:
                kind = {"score": "scores", "response": "responses", "cost": "costs"}.get(match[1], match[1])
                model = original[len(match[1]) + 1 :]
                value: Any = cell
                if kind != "responses":
                    try:
                        value = float(cell)
                    except ValueError:
                        collector.add(Problem(line, f"{kind}.{model}", f"{cell!r} is not a number"))
                        continue
                row.setdefault(kind, {})[model] = value
            else:
                row[name] = cell
        yield line, row


def _validate_row(line: int, row: dict[str, Any], collector: _Collector) -> Record | None:
    problems: list[Problem] = []

    def fail(field_name: str, message: str) -> None:
        problems.append(Problem(line, field_name, message))

    query_key = next((a for a in QUERY_ALIASES if a in row), None)
    query = row.get(query_key) if query_key else None
    if query_key is None:
        fail("query", "missing; every line needs the query text")
    elif not isinstance(query, str) or not query.strip():
        fail(query_key, "must be a non-empty string")
        query = None

    given_id = row.get("id")
    if given_id is None:
        record_id = text_hash(query)[:16] if isinstance(query, str) else ""
    elif isinstance(given_id, bool) or not isinstance(given_id, (str, int)):
        fail("id", "must be a string or an integer")
        record_id = ""
    else:
        record_id = str(given_id).strip()
        if not record_id:
            fail("id", "is empty")
        elif len(record_id) > MAX_ID_LENGTH:
            fail("id", f"longer than {MAX_ID_LENGTH} characters")

    dataset = row.get("dataset")
    if dataset is not None:
        if not isinstance(dataset, str) or not _NAME_RE.match(dataset) or len(dataset) > MAX_DATASET_NAME_LENGTH:
            fail("dataset", f"{dataset!r} is not a valid name (letters, digits, '.', '_', '-', ':', '/'; "
                            f"at most {MAX_DATASET_NAME_LENGTH} characters)")
            dataset = None

    gold_key = next((a for a in GOLD_ALIASES if a in row), None)
    gold = row.get(gold_key) if gold_key else None
    if gold is None:
        gold_text = ""
    elif isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        fail(gold_key or "gold", "must be a string or a number")
        gold_text = ""
    else:
        gold_text = str(gold)

    task_type = row.get("task_type") or ""
    if task_type:
        task_type = str(task_type).strip().lower()
        if task_type not in TASK_TYPES:
            fail("task_type", f"{row['task_type']!r} is not one of {', '.join(TASK_TYPES)}")

    category = row.get("category") or ""
    if not isinstance(category, str) or len(category) > 100:
        fail("category", "must be a string of at most 100 characters")
        category = ""

    split = row.get("split")
    if split is not None and split != "":
        split = str(split).strip().lower()
        if split not in SPLITS:
            fail("split", f"{row['split']!r} is not 'train' or 'test'")
    else:
        split = None

    scores = _model_map(row.get("scores"), "scores", fail, _check_score)
    responses = _model_map(row.get("responses"), "responses", fail, _check_response)
    costs = _model_map(row.get("costs"), "costs", fail, _check_cost)

    for problem in problems:
        collector.add(problem)
    if problems:
        return None
    assert isinstance(query, str)
    metadata = {k: v for k, v in row.items() if k not in KNOWN_FIELDS}
    return Record(
        line=line, id=record_id, id_given=given_id is not None, dataset=dataset, query=query, gold=gold_text,
        task_type=task_type, category=category.strip(), split=split, scores=scores,
        responses={k: v for k, v in responses.items() if v is not None}, costs=costs, metadata=metadata,
    )


def _model_map(value: Any, name: str, fail: Callable[[str, str], None],
               check: Callable[[Any], tuple[Any, str | None]]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        fail(name, "must be an object of model name -> value")
        return {}
    result: dict[str, Any] = {}
    for model, raw in value.items():
        if not _NAME_RE.match(model) or len(model) > MAX_MODEL_NAME_LENGTH:
            fail(f"{name}.{model}", "is not a valid model name (letters, digits, '.', '_', '-', ':', '/')")
            continue
        checked, error = check(raw)
        if error:
            fail(f"{name}.{model}", error)
        else:
            result[model] = checked
    return result


def _check_score(raw: Any) -> tuple[Any, str | None]:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        return None, f"{raw!r} is not a number"
    if not 0 <= raw <= 1:
        return None, f"{raw} is outside [0, 1]"
    return float(raw), None


def _check_response(raw: Any) -> tuple[Any, str | None]:
    if raw is not None and not isinstance(raw, str):
        return None, "must be a string"
    return raw, None


def _check_cost(raw: Any) -> tuple[Any, str | None]:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or raw < 0:
        return None, f"{raw!r} is not a non-negative number"
    return float(raw), None
