"""Wide CSV files: the header and row checks take time linear in the number of columns; 100,000 are refused.

Timings are compared with each other in the same run (best of several tries), never with a fixed number of seconds.
"""
from __future__ import annotations

import time

import pytest

from evaluation.core.datasets import DatasetFileError, parse_dataset_file


def wide_csv(columns: int, *, duplicate: bool = False) -> bytes:
    """A query column and ``columns - 1`` score columns of one model each, and one row; optionally a repeated name."""
    names = ["query"] + [f"score:m{i}" for i in range(columns - 1)]
    if duplicate:
        names[-1] = "Query"
    return f"{','.join(names)}\nwhat is 2+2?,{','.join('0.5' for _ in range(columns - 1))}\n".encode()


def narrow_csv(size: int) -> bytes:
    """An ordinary file of about ``size`` bytes: a query and a gold answer per line."""
    lines, total = ["query,gold"], 11
    while total < size:
        lines.append(f"what is {len(lines)} plus {len(lines)}? answer with a number,{2 * len(lines)}")
        total += len(lines[-1]) + 1
    return ("\n".join(lines) + "\n").encode()


def best_time(data: bytes, tries: int = 5) -> float:
    """The fastest of ``tries`` parses (or refusals) of ``data``: the least noisy measure on a shared machine."""
    times = []
    for _ in range(tries):
        started = time.perf_counter()
        try:
            parse_dataset_file(data, filename="wide.csv")
        except DatasetFileError:
            pass
        times.append(time.perf_counter() - started)
    return min(times)


def test_a_csv_with_100000_columns_is_refused_at_its_header_faster_than_an_ordinary_file_is_read() -> None:
    data = wide_csv(100_000)
    assert len(data) > 800_000
    with pytest.raises(DatasetFileError) as refused:
        parse_dataset_file(data, filename="wide.csv")
    (problem,) = refused.value.problems
    assert (problem.line, problem.field) == (1, "header")
    assert "100,000 columns, above the limit of 10,000" in problem.message
    # The refusal reads the header once: quicker than reading an ordinary file of the same size line by line.
    assert best_time(data, tries=3) < best_time(narrow_csv(len(data)), tries=3)


def test_a_csv_with_10000_columns_is_read_in_full() -> None:
    parsed = parse_dataset_file(wide_csv(10_000), filename="wide.csv")
    (record,) = parsed.records
    assert len(record.scores) == 9_999
    assert record.scores["m9998"] == 0.5


@pytest.mark.parametrize("duplicate", [False, True], ids=["valid", "duplicate-header"])
def test_reading_the_header_and_the_rows_takes_time_linear_in_the_number_of_columns(duplicate: bool) -> None:
    small, large = wide_csv(1_000, duplicate=duplicate), wide_csv(10_000, duplicate=duplicate)
    if duplicate:  # the check compares names case-insensitively, so "Query" repeats "query"
        with pytest.raises(DatasetFileError, match="duplicate column"):
            parse_dataset_file(large, filename="wide.csv")
    ratio = best_time(large) / best_time(small)
    # 10 times the columns: about 10 times the time when linear, about 100 times when quadratic (as it was).
    assert ratio < 30, f"10x the columns took {ratio:.0f}x the time"
