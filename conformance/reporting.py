"""What a run of the suite reports: per test, a case file and the commands that replay it
when it fails; at the end, the conformance matrix and the ``--report-json`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .collection import item_info, stable_id
from .session import (
    CASE_PROPERTY,
    EXERCISED,
    FAILING_PROPERTY,
    FEATURE_PROPERTY,
    TEST_PROPERTY,
    active,
    harness,
    run_options,
    versions,
)

if TYPE_CHECKING:
    from .harness import Harness


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """The summary is gathered on the controller (or the only process), never on a worker."""
    if active(config) and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Summary(config, harness(config)), "weightcheck-summary")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = yield
    config = item.config
    if not active(config) or not item.get_closest_marker("conformance"):
        return report
    prop, family, regression = item_info(item)
    if report.when == "setup" and report.skipped or report.when == "call":
        report.user_properties.append(
            (TEST_PROPERTY, {"id": stable_id(item), "property": prop, "family": family})
        )
    if report.when != "call":
        return report
    run_harness = harness(config)
    counts = run_harness.counts.pop(item.nodeid, None)
    example = run_harness.last_example.pop(item.nodeid, None)
    if counts:
        report.user_properties.append((FEATURE_PROPERTY, dict(counts)))
        if report.passed and counts["examples"] and not counts[EXERCISED]:
            _not_exercised(item, report, example.property if example else None)
    if report.skipped and hasattr(report, "wasxfail") and example is not None:
        # a known failure (--expect-fail): the matrix says which features it touched
        report.user_properties.append((FAILING_PROPERTY, example.case.features()))
    if report.failed:
        case_file = _write_case(config, item, report, example, regression)
        if example is not None:
            report.user_properties.append((FAILING_PROPERTY, example.case.features()))
        if case_file is not None:
            report.user_properties.append((CASE_PROPERTY, str(case_file)))
        report.sections.append(("weightcheck: replay", _replay_text(item, case_file)))
    return report


def _not_exercised(item: pytest.Item, report: pytest.TestReport, prop: str | None) -> None:
    """A test none of whose examples exercised its property is skipped, never passed."""
    from .properties import PROPERTIES

    why = PROPERTIES[prop].not_exercised if prop in PROPERTIES else ""
    reason = f"not exercised: {why or 'no example checked what the property is about'}"
    report.outcome = "skipped"
    report.longrepr = (str(item.path), item.location[1] or 0, reason)


def _write_case(config, item, report, example, regression) -> Path | None:
    if regression is not None:
        return item.callspec.params["regression"].path
    if example is None:
        return None
    from .casefiles import write_case_file

    message = str(report.longrepr.reprcrash.message) if hasattr(report.longrepr, "reprcrash") else ""
    try:
        return write_case_file(
            run_options(config).out_dir,
            example,
            test=stable_id(item),
            loader=config.getoption("loader"),
            message=message.splitlines()[0] if message else "",
        ).resolve()
    except OSError as exc:  # an unwritable results dir must not hide the failure itself
        report.sections.append(("weightcheck: case file", f"could not write the case file: {exc}"))
        return None


def _replay_text(item: pytest.Item, case_file: Path | None) -> str:
    config = item.config
    loader = config.getoption("loader")
    lines = []
    if case_file is not None:
        lines += [
            f"case file: {case_file}",
            f"pytest --pyargs weightcheck.conformance --loader={loader} --replay={case_file}",
            f"as a plain checkpoint with a standalone script: python -m weightcheck.conformance.casefiles {case_file} OUT_DIR",
        ]
    parts = ["pytest", f"--loader={loader}", f"--hypothesis-profile={config.option.hypothesis_profile}"]
    seed = config.getoption("hypothesis_seed", None)
    if seed is not None:
        parts.append(f"--hypothesis-seed={seed}")
    parts.append(f"'{item.path}::{item.name}'")
    lines.append("the whole test again, same examples: " + " ".join(parts))
    return "\n".join(lines)


class _Summary:
    """Per-test records for the matrix and the JSON report, gathered on the controller.

    Everything travels in each report's ``user_properties``, so it survives ``-n auto``.
    """

    def __init__(self, config: pytest.Config, harness: "Harness") -> None:
        self.config = config
        self.harness = harness
        self.records: dict[str, object] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from .report import TestRecord

        props = dict(getattr(report, "user_properties", ()))
        info = props.get(TEST_PROPERTY)
        if info is None:
            return
        outcome = report.outcome
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        reason = report.longrepr[2] if report.skipped and isinstance(report.longrepr, tuple) else None
        self.records[report.nodeid] = TestRecord(
            id=info["id"],
            nodeid=report.nodeid,
            property=info["property"],
            family=info["family"],
            outcome=outcome,
            duration=round(report.duration, 3),
            features=props.get(FEATURE_PROPERTY, {}),
            failing_features=props.get(FAILING_PROPERTY, {}),
            case_file=props.get(CASE_PROPERTY),
            reason=reason,
        )

    def pytest_terminal_summary(self, terminalreporter) -> None:
        from .report import write_json, write_terminal

        caps = self.harness.loader.capabilities
        records = list(self.records.values())
        write_terminal(terminalreporter, records, caps)
        run = run_options(self.config)
        if run.report_json:
            write_json(run.report_json, records, caps, self._run_info())
            terminalreporter.write_line(f"weightcheck: JSON report written to {run.report_json}")

    def _run_info(self) -> dict:
        config = self.config
        return {
            "loader": config.getoption("loader"),
            "loader_name": self.harness.loader.name,
            "profile": config.option.hypothesis_profile,
            "seed": config.getoption("hypothesis_seed", None),
            "versions": versions(),
        }
