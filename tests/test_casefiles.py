"""Case files round-trip, and a case exports to a plain checkpoint with a standalone script."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from weightcheck.conformance.casefiles import CaseFileError, export_case, read_case_file, write_case_file

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "regressions"
CASE = CORPUS / "seed-41086-missing-bias-untracked.json"


def test_write_then_read_gives_the_same_example(tmp_path):
    example, _ = read_case_file(CASE)
    path = write_case_file(tmp_path, example, test="missing_tensor[llama]", message="boom")
    again, body = read_case_file(path)
    assert again == example and body["test"] == "missing_tensor[llama]"
    assert path.parent == tmp_path / "cases"


def test_bad_case_files_are_clear_errors(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(CaseFileError, match="cannot read"):
        read_case_file(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"schema": "other/9"}))
    with pytest.raises(CaseFileError, match="schema"):
        read_case_file(tmp_path / "y.json")


def test_export_writes_an_hf_checkpoint_and_a_script_that_checks_a_loader(tmp_path):
    out = export_case(CORPUS / "seed-38074-jais-conv1d-tied-masks.json", tmp_path / "case")
    names = sorted(p.name for p in (out / "checkpoint").iterdir())
    assert "config.json" in names and "model.safetensors.index.json" in names
    ok = subprocess.run(
        [sys.executable, str(out / "reproduce.py"), "--loader", "weightcheck.reference_models.reference_loader"],
        capture_output=True, text=True, check=True,
    )
    assert ok.stdout.strip().endswith("OK"), ok.stdout
    bad = subprocess.run(
        [sys.executable, str(out / "reproduce.py"), "--loader", "weightcheck.reference_models.mutants:conv1d_loader"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    assert "problem" in bad.stdout or bad.returncode != 0, bad.stdout + bad.stderr


def test_export_of_a_missing_tensor_case_leaves_the_tensor_out(tmp_path):
    out = export_case(CASE, tmp_path / "case")
    index = json.loads((out / "checkpoint" / "model.safetensors.index.json").read_text())
    assert "model.layers.1.self_attn.o_proj.bias" not in index["weight_map"]
    assert "Dropped tensor: model.layers.1.self_attn.o_proj.bias" in (out / "reproduce.py").read_text()
