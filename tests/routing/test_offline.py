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
    assert "ID mean" in done.stdout and "avengers closes" in done.stdout
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def llmrouter_records() -> Path:
    path = REPO.parent / "shared" / "data" / "llmrouter" / "records.jsonl"
    assert path.exists(), f"{path} is missing: the tests need ../shared/data beside the repository"
    return path


def test_the_json_holds_the_config_every_method_and_the_timings(result) -> None:  # type: ignore[no-untyped-def]
    config = result["config"]
    assert (config["k"], config["seed"], config["embedder"], config["method"]) == (64, 42, "minilm", "kmeans")
    assert (config["train_queries"], config["test_queries"]) == (5608, 381) and len(config["models"]) == 9
    assert set(result["methods"]) == {"avengers", "avengers_soft", "knn", "best_single", "best_per_dataset",
                                      "random", "oracle"}
    test_datasets = {"agentverse-logicgrid", "agentverse-mgsm", "commongen", "gsm8k", "mbpp", "mmlu", "natural_qa",
                     "trivia_qa"}
    for method in result["methods"].values():
        assert set(method["per_dataset"]) == test_datasets
        assert method["out_of_distribution"] is None  # every test dataset has train queries
        assert abs(method["in_distribution"] - sum(method["per_dataset"].values()) / 8) < 1e-9
    assert {"embedding_s", "clustering_s", "routing_s"} <= set(result["timings"])


def test_avengers_beats_the_best_single_model_and_random_choice(result) -> None:  # type: ignore[no-untyped-def]
    ind = {name: m["in_distribution"] for name, m in result["methods"].items()}
    assert ind["avengers"] > ind["best_single"]
    assert ind["avengers"] > ind["random"]
    assert all(ind["oracle"] >= value for value in ind.values())
    assert 0 < result["gap_to_oracle_closed"] < 1


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
