"""What a run of the suite reports: per test, a case file and the commands that replay it
when it fails; at the end, the conformance matrix and the ``--report-json`` file.

(PYTEST_DONT_REWRITE: the plugin's modules import each other; nothing here asserts.)
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
    KNOWN_FAILURES,
    KNOWN_PREFIX,
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
        info = {"id": stable_id(item), "property": prop, "family": family, "checks_values": _checks_values(item)}
        report.user_properties.append((TEST_PROPERTY, info))
    if report.when != "call":
        return report
    run_harness = harness(config)
    counts = run_harness.counts.pop(item.nodeid, None)
    example = run_harness.last_example.pop(item.nodeid, None)
    failing = run_harness.failing.pop(item.nodeid, None)
    run_harness.passed.pop(item.nodeid, None)
    if counts:
        report.user_properties.append((FEATURE_PROPERTY, dict(counts)))
        if report.passed and counts[KNOWN_FAILURES]:
            _known_failures(report, counts)
        if report.passed and counts["examples"] and not counts[EXERCISED]:
            _not_exercised(item, report, example.property if example else None)
    if report.skipped and hasattr(report, "wasxfail") and example is not None:
        # a known failure (--expect-fail): the matrix says which features it touched
        report.user_properties.append((FAILING_PROPERTY, _failing_features(example)))
    if report.failed and config.option.verbose < 2:
        _concise(report, call)
    if report.failed:
        case_file = _write_case(config, item, report, example, regression)
        if example is not None:
            report.user_properties.append((FAILING_PROPERTY, _failing_features(example)))
        if case_file is not None:
            report.user_properties.append((CASE_PROPERTY, str(case_file)))
        if failing is not None and failing.budget_spent:
            report.sections.append((
                "weightcheck: shrinking",
                f"shrinking stopped after its budget ({run_options(config).shrink_budget:g} s, "
                "--shrink-budget): the example is the smallest found by then, not the smallest there is",
            ))
        report.sections.append(("weightcheck: replay", _replay_text(item, case_file, regression)))
    return report


def _known_failures(report: pytest.TestReport, counts) -> None:
    """Examples whose failure an expectation narrowed by 'when' covers: said in a section of
    the report; a test whose every exercised example was such a failure is a known failure
    (xfailed), never passed."""
    entry = f"{KNOWN_PREFIX}entry "
    hits = {k.removeprefix(entry): n for k, n in counts.items() if k.startswith(entry)}
    lines = [f"{n} example(s) failed as expected by: {label}" for label, n in sorted(hits.items())]
    lines.append(f"{counts[EXERCISED]} other example(s) passed")
    report.sections.append(("weightcheck: known failures (expectations narrowed by 'when')", "\n".join(lines)))
    if not counts[EXERCISED]:
        report.outcome = "skipped"
        report.wasxfail = "expected (" + "; ".join(sorted(hits)) + ")"


def _failing_features(example) -> dict:
    """What the failing example used: its case's features and the input its property brought."""
    from .properties import PROPERTIES

    features = example.case.features()
    prop = PROPERTIES.get(example.property)
    brought = prop.input_of(example.extras) if prop is not None else None
    if brought:
        features[f"input {brought}"] = True
    return features


def _concise(report: pytest.TestReport, call) -> None:
    """A property failure reads as its own message, in one screen: the headline, the first
    differing regions, the case (the traceback through the suite and Hypothesis's draws are
    in the case file's terms already; -vv shows them all)."""
    from .assertions import PropertyFailure
    from .protocol import AdapterError

    error = call.excinfo.value if call.excinfo is not None else None
    if isinstance(error, PropertyFailure):
        report.longrepr = f"{type(error).__name__}: {error}"
    elif isinstance(error, AdapterError):
        report.longrepr = f"adapter error (the loader breaks the weightcheck protocol): {error}"


def _checks_values(item: pytest.Item) -> bool:
    """Whether the item's property compares loaded values (the matrix counts only those)."""
    from .properties import PROPERTIES

    callspec = getattr(item, "callspec", None)
    prop = (callspec.params.get("prop") if callspec else None) or item_info(item)[0]
    return PROPERTIES[prop].checks_values if prop in PROPERTIES else True


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


def _replay_text(item: pytest.Item, case_file: Path | None, regression: str | None) -> str:
    """Commands that reproduce the failure, from the directory the run was started in: no test
    paths (the plugin runs the installed suite), so the project's own pytest config applies."""
    config = item.config
    loader = config.getoption("loader")
    lines = []
    if case_file is not None:
        lines += [
            f"this case again: pytest --loader={loader} --replay={case_file}",
            f"as a plain checkpoint and a script: python -m weightcheck export {case_file} OUT_DIR",
        ]
    if regression is None and not run_options(config).replay:
        parts = ["pytest", f"--loader={loader}", f"--hypothesis-profile={config.option.hypothesis_profile}"]
        seed = config.getoption("hypothesis_seed", None)
        if seed is not None:
            parts.append(f"--hypothesis-seed={seed}")
        parts.append(f"-k '{item.name}'")
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
        self.no_examples = False

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
            checks_values=info.get("checks_values", True),
            features=props.get(FEATURE_PROPERTY, {}),
            failing_features=props.get(FAILING_PROPERTY, {}),
            case_file=props.get(CASE_PROPERTY),
            reason=reason,
        )

    def examples(self) -> int:
        return sum(r.features.get("examples", 0) for r in self.records.values())

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """A run given ``--loader`` that ran no conformance example never passes (a nightly job
        whose tests were all skipped or deselected must not stay green)."""
        if session.exitstatus == 0 and not self.config.option.collectonly and not self.examples():
            self.no_examples = True
            session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        from .report import write_json, write_terminal

        if self.config.option.collectonly:
            return
        caps = self.harness.loader.capabilities
        records = list(self.records.values())
        write_terminal(terminalreporter, records, caps)
        if self.no_examples:
            terminalreporter.write_line(
                "weightcheck: no conformance example ran (every test was skipped or deselected); "
                f"exit status {int(pytest.ExitCode.NO_TESTS_COLLECTED)}, never a pass",
                red=True,
            )
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
