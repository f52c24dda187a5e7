"""The run's conformance matrix (terminal) and ``--report-json`` (versioned schema).

Rows are what the suite can exercise (families and features); for each, how many examples
drew it and how many established it, and the outcome of the tests that did.  "passed" is only
ever shown for something that value-checking properties ran and passed with, never for a known
failure (``--expect-fail``, "KNOWN FAILURE"); what the loader does not support, or what its
capabilities make impossible, is said as such.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightcheck.capabilities import Capabilities, FEATURES

from .session import KNOWN_PREFIX

from weightcheck.families import FAMILY_NAMES

REPORT_SCHEMA_VERSION = 2
# Observed features beyond the capabilities: (name, what makes it possible, or None: always).
EXTRA_FEATURES = (
    ("gqa_replicated", "tensor_parallel"),
    ("redundant_lm_head", "tied_embeddings"),
    ("buffers_in_checkpoint", None),
    ("shared_expert", "family qwen2_moe"),
    ("mixed_dense_moe", "family qwen3_moe|family qwen2_moe"),
    # index boundaries and configs as real checkpoints write them (drawn rarely: see the counts)
    ("many_layers", None),
    ("pp_split_crosses_layer_10", "pipeline_parallel"),
    ("two_digit_experts", "family qwen3_moe|family qwen2_moe|family deepseek_v32"),
    ("vocab_padding_boundary", None),
    ("config_defaults_omitted", None),
)
# The features an example can use (``Case.features()``), as the matrix's rows name them.
MATRIX_FEATURES = (*FEATURES, *(name for name, _ in EXTRA_FEATURES))


@dataclass
class TestRecord:
    id: str
    nodeid: str
    property: str | None
    family: str | None
    outcome: str
    duration: float
    checks_values: bool = True
    features: dict[str, int] = field(default_factory=dict)
    failing_features: dict[str, Any] = field(default_factory=dict)
    case_file: str | None = None
    reason: str | None = None


def _possible(requirement: str | None, caps: Capabilities) -> bool:
    if requirement is None:
        return True
    for option in requirement.split("|"):
        if option.startswith("family "):
            if option.removeprefix("family ") in caps.families:
                return True
        elif caps.supports(option):
            return True
    return False


def _input_rows() -> list[tuple[str, str, str | None]]:
    """One row per kind of input the properties bring (judged by the property that brings it)."""
    from .properties import PROPERTIES

    return [(label, f"input {label}", None) for prop in PROPERTIES.values() for label in prop.inputs]


def _feature_rows(caps: Capabilities) -> list[tuple[str, str, str | None]]:
    """(label, counter key, why it cannot occur with this loader or None) for every row."""
    rows = [
        (f"family {f}", f"family={f}", None if f in caps.families else "not supported by the loader")
        for f in FAMILY_NAMES
    ]
    rows += [
        (name, name, None if caps.supports(name) else "not supported by the loader")
        for name in FEATURES
    ]
    rows += [
        (name, name, None if _possible(needs, caps) else f"not supported (needs {needs.replace('|', ' or ')})")
        for name, needs in EXTRA_FEATURES
    ]
    return rows


def _used(key: str, features: dict[str, Any]) -> bool:
    if key.startswith("family="):
        return features.get("family") == key.split("=", 1)[1]
    return bool(features.get(key))


def matrix(records: list[TestRecord], caps: Capabilities) -> list[dict[str, Any]]:
    """One row per family and feature.  "passed" needs examples of a property that checks
    values, in a test that passed; what was drawn only by tests that failed first (or by
    tests that check no values) is "not established", never passed."""
    rows = []
    for label, key, impossible in _feature_rows(caps) + _input_rows():
        drawn = sum(r.features.get(key, 0) for r in records)
        own_verdict = key.startswith("input ")  # its own property judges it, values or not
        established = sum(
            r.features.get(key, 0) - r.features.get(KNOWN_PREFIX + key, 0)
            for r in records
            if r.outcome == "passed" and (r.checks_values or own_verdict)
        )
        failed = [r.id for r in records if r.outcome == "failed" and _used(key, r.failing_features)]
        known = [
            r.id for r in records
            if r.outcome == "xfailed" and _used(key, r.failing_features) or r.features.get(KNOWN_PREFIX + key)
        ]
        note = ""
        if impossible:
            status = impossible
        elif failed:
            status = "failed"
        elif known:
            status = "known failure"
        elif established:
            status = "passed"
        elif not drawn:
            status = "not exercised"
        else:
            status = "not established"
            drew = [r for r in records if r.features.get(key)]
            if any(r.outcome == "failed" for r in drew):
                note = "the tests that drew it failed first"
            elif any(r.outcome == "xfailed" for r in drew):
                note = "the tests that drew it are known failures (on other examples)"
            elif any(r.outcome == "skipped" for r in drew):
                note = "the tests that drew it were not exercised"
            else:
                note = "only tests that check no values drew it"
        rows.append(
            {
                "feature": label,
                "status": status,
                "examples": drawn,
                "established": established,
                "tests": sum(1 for r in records if r.features.get(key)),
                "failed_tests": failed,
                "known_failures": known,
                "note": note,
            }
        )
    return rows


LOUD = ("failed", "not exercised", "known failure", "not established")


def write_terminal(tr, records: list[TestRecord], caps: Capabilities) -> None:
    tr.section("weightcheck: conformance matrix")
    total = sum(r.features.get("examples", 0) for r in records)
    tr.write_line(f"examples run: {total}")
    tr.write_line(f"  {'feature':<32} {'status':<30} {'examples':>9}  failing tests / note")
    for row in matrix(records, caps):
        listed = row["failed_tests"] or [f"{t} (expected)" for t in row["known_failures"]]
        failing = ", ".join(listed[:3]) + (" ..." if len(listed) > 3 else "")
        status = row["status"].upper() if row["status"] in LOUD else row["status"]
        counted = f"{row['established']}/{row['examples']}" if row["examples"] != row["established"] else str(row["examples"])
        tr.write_line(f"  {row['feature']:<32} {status:<30} {counted:>9}  {failing or row['note']}".rstrip())
    tr.write_line(
        "  (examples: established/drawn where they differ; established = in passed tests of "
        "properties that check values)"
    )
    cases = [r.case_file for r in records if r.case_file]
    if cases:
        tr.write_line(f"case files of failures: {len(cases)} (see each failure's replay section)")


def write_json(path: str | Path, records: list[TestRecord], caps: Capabilities, run: dict[str, Any]) -> None:
    outcomes = Counter(r.outcome for r in records)
    body = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "run": run,
        "capabilities": {"families": sorted(caps.families), "features": sorted(caps.features)},
        "summary": dict(sorted(outcomes.items())),
        "matrix": matrix(records, caps),
        "tests": [r.__dict__ for r in records],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
