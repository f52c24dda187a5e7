"""ci/mutation_matrix.py: its kill search finds the mutants, the reference passes, and the
report and JSON say so.  A small example budget keeps this to a few seconds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from weightcheck.families import FAMILY_NAMES

SCRIPT = Path(__file__).resolve().parents[1] / "ci" / "mutation_matrix.py"


@pytest.fixture(scope="module")
def matrix():
    spec = importlib.util.spec_from_file_location("mutation_matrix", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_properties_in_the_suites_order(matrix):
    from weightcheck.conformance.properties import PROPERTY_NAMES as PROPERTIES

    assert matrix.PROPERTIES == PROPERTIES


def test_conv1d_mutant_killed_by_roundtrip_on_gpt2(matrix):
    outcome = matrix.kill_search("conv1d_not_transposed", max_examples=5)
    assert outcome.killed
    assert (outcome.prop, outcome.family) == ("roundtrip", "gpt2")
    assert outcome.symptom  # the failure shows the Conv1D bug ("c_"), not something else
    # roundtrip on llama ran its 5 examples and passed first, then gpt2 failed
    assert [(t["family"], t["failed"]) for t in outcome.tests] == [("llama", False), ("gpt2", True)]
    assert outcome.examples == outcome.tests[0]["examples"] + outcome.examples_in_test
    assert 0 < outcome.seconds <= outcome.total_seconds


def test_tracking_mutant_killed_by_missing_tensor(matrix):
    # Only its own bug's property, so an unrelated defect of the mutant cannot kill it first.
    outcome = matrix.kill_search("tracked_on_any_shard", max_examples=20, properties=("missing_tensor",))
    assert outcome.killed
    assert (outcome.prop, outcome.family) == ("missing_tensor", "llama")
    assert "reported as loaded but should not be" in outcome.message
    assert outcome.symptom


def test_seeded_search_kills_and_is_reproducible(matrix):
    first = matrix.kill_search("conv1d_not_transposed", max_examples=5, seed=3)
    again = matrix.kill_search("conv1d_not_transposed", max_examples=5, seed=3)
    assert first.killed and first.seed == 3
    assert (first.prop, first.family, first.examples) == (again.prop, again.family, again.examples)
    summary = matrix.seed_summary([first, again])
    assert summary["kill_rate"] == 1.0 and summary["survived_seeds"] == []


def test_reference_control_passes_every_property(matrix):
    outcome = matrix.kill_search(matrix.REFERENCE, max_examples=8, stop_at_first=False)
    assert not outcome.killed, outcome.failures
    ran = {(t["property"], t["family"]) for t in outcome.tests if t["skipped"] is None}
    skipped = {(t["property"], t["family"]) for t in outcome.tests if t["skipped"] is not None}
    assert skipped == {("lora_equivalence", "gpt2"), ("lora_equivalence", "deepseek_v32")}
    assert len(ran) == len(matrix.PROPERTIES) * len(FAMILY_NAMES) - 2  # no LoRA: gpt2, deepseek_v32
    assert "reference: passed" in matrix.reference_verdict([outcome])


def test_main_writes_json_and_exit_code(matrix, tmp_path, capsys):
    out = tmp_path / "matrix.json"
    code = matrix.main(
        ["--mutants", "conv1d_not_transposed", "--examples", "3", "--skip-reference", "--quiet",
         "--markdown", "--json", str(out)]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "| conv1d_not_transposed |" in text and "killed 1 of 1 mutants" in text
    document = json.loads(out.read_text())
    assert document["schema_version"] == matrix.SCHEMA_VERSION
    (row,) = document["mutants"]
    assert row["killed"] and row["killed_by"] == {"property": "roundtrip", "family": "gpt2"}
    assert document["reference"] is None and document["exit_code"] == 0


def test_survivor_means_exit_code_one(matrix, monkeypatch, capsys):
    survivor = matrix.Outcome("conv1d_not_transposed", None, 1)
    monkeypatch.setattr(matrix, "run_tasks", lambda tasks, jobs, progress: [survivor for _ in tasks])
    assert matrix.main(["--mutants", "conv1d_not_transposed", "--skip-reference", "--quiet"]) == 1
    assert "SURVIVED" in capsys.readouterr().out


def test_unknown_mutant_is_a_usage_error(matrix):
    with pytest.raises(SystemExit) as exit_info:
        matrix.main(["--mutants", "no_such_mutant"])
    assert exit_info.value.code == 2


def test_a_skipped_property_fails_the_reference_control(matrix, monkeypatch):
    from weightcheck.conformance.search import SearchResult

    def never_judged(loader, prop, family, max_examples, seed=None):
        return SearchResult(prop, family, examples=3, skipped="not exercised: nothing checked")

    monkeypatch.setattr(matrix, "run_search", never_judged)
    outcome = matrix.kill_search(matrix.REFERENCE, max_examples=3, stop_at_first=False)
    assert outcome.killed and "not judged" in outcome.message
