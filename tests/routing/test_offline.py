"""The offline evaluator end to end on the real LLMRouter records, with the real MiniLM embedder."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "routing.offline", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)


@pytest.fixture(scope="module")
def result(tmp_path_factory, llmrouter_records) -> dict:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("offline") / "result.json"
    done = run("evaluate", str(llmrouter_records), "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ID mean" in done.stdout and "gap closed" in done.stdout
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def llmrouter_records() -> Path:
    path = REPO.parent / "shared" / "data" / "llmrouter" / "records.jsonl"
    assert path.exists(), f"{path} is missing: the tests need ../shared/data beside the repository"
    return path


COLUMNS = {"avengers", "paper", "soft", "knn", "best_single", "best_per_dataset", "random", "oracle"}


def test_the_json_holds_the_config_every_method_and_the_timings(result) -> None:  # type: ignore[no-untyped-def]
    from routing.core.embedding import DEFAULT_EMBEDDER

    config = result["config"]
    # The offline defaults are the platform's: the same embedder, the router chosen among the same candidates.
    assert (config["k"], config["seeds"], config["embedder"], config["method"]) == (64, [42], DEFAULT_EMBEDDER,
                                                                                   "kmeans")
    assert config["embedder"] == "minilm-static" and config["router"] == "auto" and not config["resplit"]
    assert [c["label"] for c in config["candidates"]][0] == "dataset(shrinkage=inf)"
    (run,) = result["runs"]
    assert (run["train_queries"], run["test_queries"]) == (5608, 381) and len(config["models"]) == 9
    assert set(run["methods"]) == COLUMNS == set(result["summary"])
    assert set(run["cv"]) == {c["label"] for c in config["candidates"]} and all(len(v) == 5 for v in run["cv"].values())
    assert run["chosen"]["label"] in run["cv"] and result["chosen"] == {run["chosen"]["label"]: 1}
    test_datasets = {"agentverse-logicgrid", "agentverse-mgsm", "commongen", "gsm8k", "mbpp", "mmlu", "natural_qa",
                     "trivia_qa"}
    for name, method in run["methods"].items():
        assert set(method["per_dataset"]) == test_datasets
        assert method["out_of_distribution"] is None  # every test dataset has train queries
        assert abs(method["in_distribution"] - sum(method["per_dataset"].values()) / 8) < 1e-9
        assert result["summary"][name]["in_distribution"] == {"mean": method["in_distribution"], "sd": 0.0, "n": 1}
    assert {"embedding_s", "total_s"} <= set(result["timings"])


def test_avengers_beats_the_best_single_model_and_random_choice(result) -> None:  # type: ignore[no-untyped-def]
    ind = {name: m["in_distribution"] for name, m in result["runs"][0]["methods"].items()}
    assert ind["avengers"] > ind["best_single"]
    assert ind["avengers"] > ind["random"]
    assert all(ind["oracle"] >= value for value in ind.values())
    head = result["runs"][0]["headline"]["in_distribution"]["avengers"]
    assert 0 < head["gap_closed"] < 1
    assert abs(head["imp_max"] - (ind["avengers"] - ind["best_per_dataset"])) < 1e-9
    assert abs(head["oracle_gap"] - (ind["oracle"] - ind["avengers"]) / ind["oracle"]) < 1e-9


def test_several_seeds_with_resplits_report_the_mean_and_spread(tmp_path, llmrouter_records) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "seeds.json"
    done = run("evaluate", str(llmrouter_records), "--seeds", "42,999", "--resplit", "--test-fraction", "0.2",
               "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ID mean" in done.stdout and "imp_max" in done.stdout and "±" in done.stdout
    result = json.loads(out.read_text())
    first, second = result["runs"]
    assert (first["seed"], second["seed"]) == (42, 999)
    # Every dataset is redrawn, fixed splits included: 20% of each of the 14 datasets is test.
    assert 0.19 < first["test_queries"] / (first["train_queries"] + first["test_queries"]) < 0.21
    assert len(first["methods"]["avengers"]["per_dataset"]) == 14
    values = [first["methods"]["avengers"]["in_distribution"], second["methods"]["avengers"]["in_distribution"]]
    stats = result["summary"]["avengers"]["in_distribution"]
    assert abs(stats["mean"] - sum(values) / 2) < 1e-9 and stats["n"] == 2
    assert abs(stats["sd"] - abs(values[0] - values[1]) / 2 ** 0.5) < 1e-9
    assert first["methods"]["oracle"] != second["methods"]["oracle"]  # the splits differ


def test_a_named_router_with_its_parameters_is_scored_without_choosing(tmp_path, llmrouter_records) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "named.json"
    done = run("evaluate", str(llmrouter_records), "--router", "dataset", "--set", "shrinkage=16", "--k", "8",
               "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    (run_,) = json.loads(out.read_text())["runs"]
    assert run_["cv"] == {} and run_["chosen"]["label"] == "dataset(k=8, shrinkage=16)"
    assert run_["chosen"]["params"]["k"] == 8


def test_bad_input_gets_a_clear_message(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = run("evaluate", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    no_scores = tmp_path / "plain.jsonl"
    no_scores.write_text('{"id": "1", "dataset": "d", "query": "q"}\n')
    done = run("evaluate", str(no_scores))
    assert done.returncode == 1 and "no line has scores" in done.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "dataset": "d", "query": "q", "scores": {"m": 3}}\n')
    done = run("evaluate", str(bad))
    assert done.returncode == 1 and "line 1, scores.m: 3 is outside [0, 1]" in done.stderr
    records = str(no_scores)
    for args, message in (
        (["--test-fraction", "1.5"], "--test-fraction must be between 0 and 1"),
        (["--seeds", "1,x"], "--seeds must be comma-separated integers"),
        (["--seeds", "1,1"], "no seed twice"),
        (["--router", "nope"], "--router must be auto or one of"),
        (["--set", "shrinkage=4"], "--set needs --router NAME"),
        (["--router", "dataset", "--set", "bogus=1"], "router 'dataset' has no parameter bogus"),
        (["--router", "dataset", "--set", "novalue"], "--set takes NAME=VALUE"),
        (["--method", "nope"], "--method must be one of"),
    ):
        done = run("evaluate", records, *args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr[-500:])


def test_the_sweep_writes_its_json_and_figures(tmp_path, llmrouter_records) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "sweep"
    done = run("sweep", str(llmrouter_records), "--k", "1,8", "--seeds", "42", "--methods", "kmeans,birch",
               "--embedders", "minilm", "--ablation-seeds", "1", "--shrinkage", "32", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "sweep.json").read_text())
    assert [row["k"] for row in result["k_sweep"]] == [1, 8]
    one = result["k_sweep"][0]
    # One cluster routes everything to the best train model: plain and shrunk profiles agree.
    assert one["plain_test"]["mean"] == one["robust_test"]["mean"]
    assert [row["method"] for row in result["methods"]] == ["kmeans", "birch"]
    assert [row["models"] for row in result["models"]] == list(range(1, 10))
    assert len(set(result["models"][-1]["team"])) == 9
    for name in ("fig3_k_sweep.png", "fig4_models.png", "table4_methods.png", "table5_embedders.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
