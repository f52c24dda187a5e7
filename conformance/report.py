"""The run's conformance matrix (terminal) and ``--report-json`` (versioned schema).

Rows are what the suite can exercise (families and features); for each, how many examples
used it, and the outcome of the tests that did.  "passed" is only ever shown for something
that was generated and never for a known failure (``--expect-fail``, "KNOWN FAILURE"); what
the loader does not support is said as such.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightcheck.capabilities import Capabilities, FEATURES

from weightcheck.families import FAMILY_NAMES

REPORT_SCHEMA_VERSION = 1
EXTRA_FEATURES = (
    "gqa_replicated",
    "redundant_lm_head",
    "buffers_in_checkpoint",
    "shared_expert",
    "mixed_dense_moe",
)


@dataclass
class TestRecord:
    id: str
    nodeid: str
    property: str | None
    family: str | None
    outcome: str
    duration: float
    features: dict[str, int] = field(default_factory=dict)
    failing_features: dict[str, Any] = field(default_factory=dict)
    case_file: str | None = None
    reason: str | None = None


def _feature_rows(caps: Capabilities) -> list[tuple[str, str, bool]]:
    """(label, counter key, supported) for every row of the matrix."""
    rows = [(f"family {f}", f"family={f}", f in caps.families) for f in FAMILY_NAMES]
    rows += [(name, name, caps.supports(name)) for name in FEATURES]
    rows += [(name, name, True) for name in EXTRA_FEATURES]
    return rows


def _failing_key(key: str, features: dict[str, Any]) -> bool:
    if key.startswith("family="):
        return features.get("family") == key.split("=", 1)[1]
    return bool(features.get(key))


def matrix(records: list[TestRecord], caps: Capabilities) -> list[dict[str, Any]]:
    counts: Counter = Counter()
    for r in records:
        counts.update(r.features)
    rows = []
    for label, key, supported in _feature_rows(caps):
        examples = counts.get(key, 0)
        using = [r for r in records if r.features.get(key)]
        failed = [
            r.id for r in records if r.outcome == "failed" and _failing_key(key, r.failing_features)
        ]
        known = [
            r.id for r in records if r.outcome == "xfailed" and _failing_key(key, r.failing_features)
        ]
        if not supported:
            status = "not supported by the loader"
        elif failed:
            status = "failed"
        elif known:
            status = "known failure"
        elif examples == 0:
            status = "not exercised"
        else:
            status = "passed"
        rows.append(
            {
                "feature": label,
                "status": status,
                "examples": examples,
                "tests": len(using),
                "failed_tests": failed,
                "known_failures": known,
            }
        )
    return rows


def write_terminal(tr, records: list[TestRecord], caps: Capabilities) -> None:
    tr.section("weightcheck: conformance matrix")
    total = sum(r.features.get("examples", 0) for r in records)
    tr.write_line(f"examples run: {total}")
    tr.write_line(f"  {'feature':<26} {'status':<28} {'examples':>8}  failing tests")
    for row in matrix(records, caps):
        listed = row["failed_tests"] or [f"{t} (expected)" for t in row["known_failures"]]
        failing = ", ".join(listed[:3]) + (" ..." if len(listed) > 3 else "")
        status = row["status"].upper() if row["status"] in ("failed", "not exercised", "known failure") else row["status"]
        tr.write_line(f"  {row['feature']:<26} {status:<28} {row['examples']:>8}  {failing}".rstrip())
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
