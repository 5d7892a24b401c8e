from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from evaluation.core import datasets
from evaluation.core.grading import (
    GRADERS,
    TASK_TYPES,
    Extraction,
    Grade,
    GradingUnavailable,
    extract_answer,
    grade,
    normalise_answer,
    normaliser,
)

# --- registry -------------------------------------------------------------------------------------


def test_it_registers_one_grader_per_task_type() -> None:
    assert TASK_TYPES == datasets.TASK_TYPES
    assert set(GRADERS) == set(TASK_TYPES)


def test_it_describes_each_grader_truthfully() -> None:
    for name, grader in GRADERS.items():
        assert grader.name == name
        assert grader.higher_is_better is True
        assert grader.description
    assert GRADERS["qa"].score == "f1"
    assert {GRADERS[name].score for name in ("math", "mcq", "code", "label", "exact")} == {"binary"}
    assert GRADERS["math"].options == ("timeout_s",)
    assert GRADERS["mcq"].options == ("choices",)
    assert GRADERS["label"].options == ("labels",)
    assert set(GRADERS["code"].options) == {"tests", "entry_point", "prompt", "timeout_s", "memory_mb",
                                            "allow_weak_sandbox"}


def test_it_rejects_an_unknown_task_type() -> None:
    with pytest.raises(ValueError, match="unknown task type"):
        grade("poetry", "x", "y")
    with pytest.raises(ValueError, match="unknown task type"):
        normalise_answer("poetry", "x")
    with pytest.raises(ValueError, match="unknown task type"):
        normaliser("poetry")


def test_it_returns_a_frozen_grade_with_a_reason() -> None:
    result = grade("math", r"\boxed{\frac{1}{2}}", "0.5")
    assert result == Grade(True, 1.0, "1/2", result.reason)
    assert "1/2" in result.reason
    with pytest.raises(AttributeError):
        result.correct = False  # type: ignore[misc]


# --- extraction -----------------------------------------------------------------------------------


def test_it_extracts_a_boxed_answer_with_nested_braces() -> None:
    assert extract_answer(r"so $\boxed{\frac{\sqrt{2}}{2}}$.") == Extraction(r"\frac{\sqrt{2}}{2}", "boxed")
    assert extract_answer(r"first \boxed{1}, finally \fbox{2}") == Extraction("2", "boxed")
    assert extract_answer(r"\boxed 7") == Extraction("7", "boxed")


def test_it_extracts_the_answer_field_of_a_fenced_json_block() -> None:
    response = '```json\n{\n  "reasoning": "2 + 2 {so} 4",\n  "answer": "4"\n}\n```'
    assert extract_answer(response) == Extraction("4", "json")


def test_it_extracts_a_bare_json_object_and_renders_non_strings_as_python() -> None:
    assert extract_answer('Here: {"answer": 12}') == Extraction("12", "json")
    assert extract_answer('{"answer": ["a", 1, true]}') == Extraction("['a', 1, True]", "json")


def test_it_prefers_the_json_answer_over_a_boxed_value_in_the_reasoning() -> None:
    response = '{"reasoning": "guess \\\\boxed{3} first", "answer": "5"}'
    assert extract_answer(response) == Extraction("5", "json")


def test_it_keeps_latex_backslashes_written_unescaped_in_json() -> None:
    # "\f" of \frac and "\t" of \times are valid JSON escapes: the text must not become control characters.
    response = '{"reasoning": "x", "answer": "\\frac{1}{2} \\times \\sqrt{3}"}'
    assert extract_answer(response) == Extraction(r"\frac{1}{2} \times \sqrt{3}", "json")


def test_it_falls_back_to_the_answer_field_when_the_json_is_invalid() -> None:
    response = '{"reasoning": "he said "hi" twice" "answer": "\\dfrac{3}{4}"}'
    assert extract_answer(response) == Extraction(r"\dfrac{3}{4}", "json")


def test_it_reads_the_first_json_answer_not_a_follow_up_question() -> None:
    response = '{"answer": "42"}\n\nFollow-up question:\n{"answer": "83"}'
    assert extract_answer(response).answer == "42"


def test_it_extracts_answer_colon_the_answer_is_and_the_last_line() -> None:
    assert extract_answer("Work...\n**Answer:** 18 dollars") == Extraction("18 dollars", "answer_colon")
    assert extract_answer("Final Answer: The final answer is $7$. I hope it is correct.") == Extraction(
        "$7$", "answer_colon")
    assert extract_answer("So the answer is 3.5 cups. Enjoy!") == Extraction("3.5 cups", "the_answer_is")
    assert extract_answer("Thinking\n\n  42.  \n") == Extraction("42", "last_line")


def test_it_reads_the_next_line_after_a_bare_answer_heading() -> None:
    assert extract_answer("**Answer:**\n\nB") == Extraction("B", "answer_colon")


def test_it_extracts_nothing_from_blank_or_cut_off_text() -> None:
    assert extract_answer("") == Extraction(None, "none")
    assert extract_answer("   \n ") == Extraction(None, "none")
    assert extract_answer('{\n  "reasoning": "we start by' + " adding" * 100) == Extraction(None, "none")


# --- maths ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("response", "gold"), [
    (r"\boxed{\dfrac{1}{2}}", "0.5"),
    (r"\boxed{\frac12}", r"\frac{1}{2}"),
    ("Answer: 1,000", "1000"),
    ("Answer: $1,000", "1000"),
    ("Answer: $18.00", "18"),
    ("Answer: 18 dollars", "18"),
    ("Answer: 5 cm", "5"),
    (r"\boxed{5\text{ cm}}", "5"),
    (r"\boxed{10^\circ}", "10"),
    (r"\boxed{x = 5}", "5"),
    (r"\boxed{[1,2)}", r"[1, 2)"),
    (r"\boxed{\{1, 2\}}", "2, 1"),
    (r"\boxed{\sqrt{2}/2}", r"\frac{1}{\sqrt{2}}"),
    (r"\boxed{\pi/4}", r"\frac{\pi}{4}"),
    (r"\boxed{2^{10}}", "1024"),
    (r"\boxed{\text{Monday}}", r"\text{Monday}"),
    ("Answer: 4√2 + 8", r"8 + 4\sqrt{2}"),
    ("Answer: 0.333333", r"\frac{1}{3}"),
    ("Answer: 2:00 pm", "2"),
    ('{"answer": "The total is $400 + $60 = $460."}', "460"),
    ('{"answer": "The game lasted 53 minutes."}', "53"),
    ('{"answer": "(65 + 94 + 81 + 86 + 74) / 5"}', "80"),
])
def test_it_accepts_equivalent_maths_answers(response: str, gold: str) -> None:
    result = grade("math", response, gold)
    assert result.correct, result
    assert result.score == 1.0


@pytest.mark.parametrize(("response", "gold"), [
    (r"\boxed{(1,2]}", r"[1,2)"),
    (r"\boxed{\{1, 3\}}", "1, 2"),
    (r"\boxed{\sqrt{2}}", "2"),
    ("Answer: 0.33", r"\frac{1}{3}"),
    ("Answer: 2:10 pm", "2"),
    (r"\boxed{4\sqrt{2} + 8}", "8"),
    ("Answer: 2, -2", "2"),
    (r"\boxed{-1 + 2i}", "-1"),
    ('{"answer": "10 pounds * 2 tablespoons/pound = 20 tablespoons"}', "10"),
])
def test_it_rejects_different_maths_answers(response: str, gold: str) -> None:
    result = grade("math", response, gold)
    assert not result.correct, result
    assert result.score == 0.0


def test_it_reads_percentages_as_their_number() -> None:
    assert grade("math", "Answer: 50%", "50").correct
    assert grade("math", r"\boxed{50\%}", "50").correct
    assert not grade("math", "Answer: 50%", "0.5").correct
    assert normalise_answer("math", "50%") == normalise_answer("math", "50") == "50"


def test_it_extracts_the_final_answer_from_a_worked_gold() -> None:
    assert grade("math", "Answer: 20000", "She pays 5 * 4,000 = 20,000.\n#### 20,000").correct
    assert grade("math", "Answer: 18", "# 18").correct
    assert grade("math", r"\boxed{\frac{3}{4}}", r"The ratio is $\boxed{\dfrac{3}{4}}$.").correct


def test_it_says_why_a_maths_answer_is_missing() -> None:
    result = grade("math", "", "5")
    assert result == Grade(False, 0.0, None, result.reason)
    assert "no answer" in result.reason


def test_it_normalises_equivalent_maths_answers_to_one_key() -> None:
    assert normalise_answer("math", "0.5") == normalise_answer("math", r"\frac{1}{2}") == "1/2"
    assert normalise_answer("math", r"\dfrac{2}{4}") == "1/2"
    assert normalise_answer("math", "1,000") == normalise_answer("math", "$1000.00") == "1000"
    assert normalise_answer("math", r"2^{10}") == "1024"
    assert normalise_answer("math", r"\sqrt{2}/2") == normalise_answer("math", r"\frac{1}{\sqrt{2}}")
    assert normalise_answer("math", r"\{1, 2\}") == normalise_answer("math", "2, 1")
    assert normalise_answer("math", "  ") is None


def test_it_grades_answers_with_the_same_key_the_same() -> None:
    answers = ["0.5", r"\frac{1}{2}", "1/2", r"\dfrac{2}{4}", r"2^{-1}", "$0.50"]
    golds = ["0.5", r"\frac{\sqrt{2}}{2}", r"\frac{1}{3}", "1/2"]
    assert len({normalise_answer("math", a) for a in answers}) == 1
    for gold in golds:
        assert len({grade("math", f"Answer: {a}", gold).correct for a in answers}) == 1


def test_its_normaliser_is_the_one_voting_uses() -> None:
    key = normaliser("math")
    assert key("0.5") == key(r"\frac{1}{2}")
    assert normaliser("mcq", choices=["x", "y"])("(b)") == "B"


def test_it_keeps_the_maths_time_limit_in_a_worker_thread() -> None:
    results: list[Grade] = []

    def run() -> None:
        results.append(grade("math", r"\boxed{9^{9^{9^{9}}}}", "1", timeout_s=1))

    started = time.monotonic()
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    elapsed = time.monotonic() - started
    assert not thread.is_alive()
    assert elapsed < 10 * 1 + 5  # the limit plus a fresh worker's start on a busy machine
    assert results[0].correct is False
    assert "timed out" in results[0].reason


def test_it_grades_maths_from_a_thread_pool() -> None:
    cases = [(r"\boxed{\frac{\pi}{4}}", r"\pi/4", True), (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", True),
             (r"\boxed{3}", "4", False), (r"\boxed{(0, 1]}", r"(0,1]", True)] * 3
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: grade("math", case[0], case[1]), cases))
    assert [r.correct for r in results] == [case[2] for case in cases]


def test_it_recovers_after_a_timeout() -> None:
    assert "timed out" in grade("math", r"\boxed{(10^{8})! + 9^{9^{9}}}", "2", timeout_s=1).reason
    assert grade("math", r"\boxed{\sqrt{4}}", "2").correct


# --- multiple choice ------------------------------------------------------------------------------


@pytest.mark.parametrize("response", ["B", "(B)", "b", "B.", "**B**", "option B", "Answer: B) blue",
                                      "The answer is (b).", "A good answer is B", "[B]", "B\n\nBecause blue."])
def test_it_finds_the_option_letter(response: str) -> None:
    result = grade("mcq", response, "B")
    assert result.correct, result
    assert result.extracted == "B"


@pytest.mark.parametrize("response", ["Both", "Cannot be determined", "A good one", "None of these"])
def test_it_does_not_read_words_as_letters(response: str) -> None:
    assert normalise_answer("mcq", response) is None


def test_it_reads_both_letters_as_ambiguous() -> None:
    assert normalise_answer("mcq", "Both A and B") is None


def test_it_matches_the_option_text_when_choices_are_known() -> None:
    choices = ["London", "Paris", "Rome"]
    assert grade("mcq", "The capital is Paris.", "B", choices=choices).correct
    assert grade("mcq", "Answer: Rome", "C", choices={"A": "London", "B": "Paris", "C": "Rome"}).correct
    assert not grade("mcq", "Answer: D", "B", choices=choices).correct


def test_it_takes_the_gold_as_a_letter_or_its_option_text() -> None:
    assert grade("mcq", "(c)", "(C)").correct
    assert grade("mcq", "C", "Rome", choices=["London", "Paris", "Rome"]).correct
    assert "not an option letter" in grade("mcq", "C", "banana").reason


def test_it_normalises_letters_for_voting() -> None:
    assert normalise_answer("mcq", "(b)") == normalise_answer("mcq", "B.") == "B"


# --- labels ---------------------------------------------------------------------------------------


def test_it_matches_labels_ignoring_case_and_punctuation() -> None:
    labels = ["positive", "negative", "not_entailment", "entailment"]
    assert grade("label", "Sentiment: POSITIVE!", "positive", labels=labels).correct
    assert grade("label", "Answer: Not entailment.", "not_entailment", labels=labels).correct
    assert not grade("label", "Answer: entailment", "not_entailment", labels=labels).correct
    assert normalise_answer("label", "Negative.", labels=labels) == "negative"


def test_it_rejects_an_unknown_or_ambiguous_label() -> None:
    labels = ["positive", "negative"]
    assert normalise_answer("label", "neutral", labels=labels) is None
    assert normalise_answer("label", "positive or negative", labels=labels) is None
    assert not grade("label", "neutral", "positive", labels=labels).correct


# --- QA -------------------------------------------------------------------------------------------


def test_it_gives_exact_match_after_squad_normalisation() -> None:
    result = grade("qa", "Answer: The Eiffel Tower.", "eiffel tower")
    assert result == Grade(True, 1.0, "eiffel tower", result.reason)


def test_it_gives_partial_credit_by_token_f1() -> None:
    result = grade("qa", "Answer: the Eiffel tower in Paris", "Eiffel Tower")
    assert not result.correct
    assert result.score == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))
    assert grade("qa", "Answer: London", "Paris").score == 0.0


def test_it_takes_the_best_of_several_gold_aliases() -> None:
    assert grade("qa", "Answer: JFK", '["John F. Kennedy", "JFK"]').correct


# --- exact ----------------------------------------------------------------------------------------


# The answer and the gold are compared as Python values: quotes, spacing and key order do not count; type and case do.
@pytest.mark.parametrize(("answer", "gold", "correct"), [
    ('{"answer": "bcksrutq"}', "'bcksrutq'", True),
    ('{"answer": "\'bcksrutq\'"}', "'bcksrutq'", True),
    ('{"answer": "[1,2]"}', "[1, 2]", True),
    ('{"answer": "{\\"b\\": 1, \\"a\\": 2}"}', "{'a': 2, 'b': 1}", True),
    ('{"answer": "8.50"}', "8.5", True),
    ('{"answer": ""}', "''", True),
    ('{"answer": "   7   "}', "'   7   '", True),
    ('{"answer": "123314"}', "'123314'", True),
    ("Answer: True", "True", True),
    ('{"answer": "\'[1, 2]\'"}', "[1, 2]", False),  # a string is not a list
    ('{"answer": "1"}', "1.0", False),  # an int is not a float
    ('{"answer": "abc"}', "'Abc'", False),  # case counts
    ('{"answer": "\'{\'a\': 1}\'"}', "{'a': 1}", False),  # a string is not a dict
])
def test_it_compares_exact_answers_as_python_values_keeping_types_and_case(answer: str, gold: str,
                                                                          correct: bool) -> None:
    assert grade("exact", answer, gold).correct is correct


def test_it_normalises_exact_answers_for_voting() -> None:
    assert normalise_answer("exact", "[1,2]") == normalise_answer("exact", "[1, 2]")
    assert normalise_answer("exact", "'abc'") == normalise_answer("exact", '"abc"') == normalise_answer("exact", "abc")


# --- code -----------------------------------------------------------------------------------------

_PROGRAM = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."


def test_it_passes_a_program_against_mbpp_asserts() -> None:
    result = grade("code", _PROGRAM, "['assert add(1, 2) == 3', 'assert add(-1, 1) == 0']")
    assert result.correct and result.score == 1.0, result
    assert result.extracted == "def add(a, b):\n    return a + b"


def test_it_fails_a_program_that_breaks_a_test() -> None:
    result = grade("code", _PROGRAM, "assert add(1, 2) == 3\nassert add(2, 2) == 5")
    assert not result.correct and result.score == 0.0
    assert "AssertionError" in result.reason


def test_it_fails_a_program_with_a_syntax_error() -> None:
    result = grade("code", "```python\ndef add(a, b)\n    return a + b\n```", "assert add(1, 2) == 3")
    assert not result.correct
    assert "SyntaxError" in result.reason


def test_it_runs_humaneval_checks_on_a_completion_after_the_prompt() -> None:
    prompt = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum xs."""\n'
    tests = "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n"
    assert grade("code", "    return sum(xs)\n", tests, prompt=prompt, entry_point="total").correct
    assert grade("code", "    return sum(xs)\n", tests, prompt=prompt).correct  # entry point from the prompt
    full = "```python\ndef total(xs: List[int]) -> int:\n    return sum(xs)\n```"
    assert grade("code", full, tests, prompt=prompt).correct  # the prompt's imports still apply
    assert not grade("code", "    return 0\n", tests, prompt=prompt).correct


def test_it_takes_the_tests_option_over_the_gold() -> None:
    assert grade("code", _PROGRAM, "ignored", tests="assert add(2, 3) == 5").correct


def test_it_stops_a_program_that_runs_too_long() -> None:
    started = time.monotonic()
    result = grade("code", "```python\nwhile True:\n    pass\n```", "assert True", timeout_s=1)
    assert not result.correct
    assert "timeout" in result.reason
    assert time.monotonic() - started < 1 + 10


def test_it_reports_a_response_without_a_program() -> None:
    assert grade("code", "   ", "assert True") == Grade(False, 0.0, None, "no program found in the response")


@pytest.mark.parametrize(("ending", "reason"), [
    ("import sys\nsys.exit(0)", "the program called sys.exit(0) before the tests finished"),
    ("raise SystemExit", "the program called sys.exit(None) before the tests finished"),
    ("import os\nos._exit(0)", "before its tests finished"),
    ("import os\nos.close(1)\nos.close(2)\nos._exit(0)", "before its tests finished"),
    ("import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\nexcept OSError:\n    pass\nos._exit(0)",
     "before its tests finished"),
])
def test_a_program_that_ends_before_its_tests_scores_zero(ending: str, reason: str) -> None:
    # add() is wrong, so only skipping the tests could pass it.
    response = f"```python\ndef add(a, b):\n    return a - b\n\n{ending}\n```"
    result = grade("code", response, "assert add(1, 2) == 3")
    assert (result.correct, result.score) == (False, 0.0)
    assert reason in result.reason, result.reason


def test_a_programs_main_block_does_not_run_before_its_tests() -> None:
    # Models often end with a main block; run as a module (as HumanEval/MBPP harnesses do), it must not end the run.
    response = ("```python\nimport sys\n\ndef add(a, b):\n    return a + b\n\ndef main():\n    return 3\n\n"
                "if __name__ == \"__main__\":\n    sys.exit(main())\n```")
    result = grade("code", response, "assert add(1, 2) == 3")
    assert (result.correct, result.score) == (True, 1.0), result.reason


def test_a_test_that_exits_early_scores_zero() -> None:
    result = grade("code", _PROGRAM, "assert add(1, 2) == 3\nimport sys\nsys.exit(0)\nassert add(2, 2) == 5")
    assert not result.correct
    assert "the tests called sys.exit(0) before the tests finished" in result.reason


def test_a_program_whose_tests_all_ran_passes_even_if_it_prints_and_starts_threads() -> None:
    response = ("```python\nimport threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\n"
                "print('x' * 100000)\ndef add(a, b):\n    return a + b\n```")
    result = grade("code", response, "assert add(1, 2) == 3", timeout_s=5)
    assert result.correct and result.score == 1.0, result.reason


def test_a_sandbox_that_cannot_confine_code_raises_instead_of_grading(monkeypatch: pytest.MonkeyPatch) -> None:
    from evaluation.core import sandbox

    seen: list[bool] = []

    def refusing(source: str, **options: object) -> sandbox.SandboxResult:
        seen.append(bool(options["allow_weak"]))
        return sandbox.SandboxResult("refused", False, None, "", "", 0.0, sandbox.REFUSAL)

    monkeypatch.setattr(sandbox, "run_python", refusing)
    with pytest.raises(GradingUnavailable, match="install bubblewrap or set AVENGERS_SANDBOX_ALLOW_WEAK=1"):
        grade("code", _PROGRAM, "assert add(1, 2) == 3")
    grade_weak = GRADERS["code"].function
    with pytest.raises(GradingUnavailable):
        grade_weak(_PROGRAM, "assert add(1, 2) == 3", allow_weak_sandbox=True)
    assert seen == [False, True]
