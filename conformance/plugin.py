"""The weightcheck pytest plugin (entry point ``pytest11: weightcheck``).

It stays inert unless the conformance tests are collected or ``--loader`` is given, so
installing weightcheck never changes another project's test run (and never imports torch
there: the heavy modules are imported once the suite is really in use).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from weightcheck.capabilities import FEATURES, LoaderSpecError

from weightcheck.families import FAMILY_NAMES

from .protocol import resolve_loader

if TYPE_CHECKING:
    from .harness import Harness

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_REGRESSIONS = PACKAGE_DIR.parent / "fixtures" / "regressions"
HARNESS_KEY = pytest.StashKey["Harness"]()
RUN_KEY = pytest.StashKey["RunOptions"]()
TEST_PROPERTY = "weightcheck_test"
FEATURE_PROPERTY = "weightcheck_features"
FAILING_PROPERTY = "weightcheck_failing_features"
CASE_PROPERTY = "weightcheck_case"


@dataclass
class RunOptions:
    out_dir: Path
    replay: Path | None
    regressions: list[Path]
    expectations: list
    report_json: Path | None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("weightcheck", "weightcheck conformance suite")
    group.addoption(
        "--loader",
        metavar="MODULE[:ATTR]",
        help="the loader under test: an object with build(arch, placement) and "
        "load(model, checkpoint) (attribute 'loader' of MODULE by default, else MODULE itself)",
    )
    group.addoption(
        "--weightcheck-out",
        metavar="DIR",
        default="weightcheck-results",
        help="where failing examples are written as case files (default: weightcheck-results)",
    )
    group.addoption(
        "--replay",
        metavar="CASE",
        help="run exactly this case file through every property it applies to, and nothing else",
    )
    group.addoption(
        "--regressions",
        metavar="DIR",
        action="append",
        default=[],
        help="a directory of case files to run before the random examples (repeatable); the "
        "bundled corpus always runs",
    )
    group.addoption(
        "--expect-fail",
        metavar="FILE",
        help="known failures, one 'ID: reason' a line (ID: PROPERTY, PROPERTY[FAMILY], "
        "regression[CASE][/PROPERTY]); a listed test that passes fails the run",
    )
    group.addoption("--report-json", metavar="FILE", help="write a JSON report (versioned schema)")


def _targets_conformance(config: pytest.Config) -> bool:
    """Whether the collected paths include this package's tests."""
    for arg in config.args:
        target = arg.split("::")[0]
        if config.option.pyargs and not Path(target).exists():
            if target in ("weightcheck", "weightcheck.conformance") or target.startswith(
                "weightcheck.conformance."
            ):
                return True
            continue
        path = (Path(config.invocation_params.dir) / target).resolve()
        if path == PACKAGE_DIR or PACKAGE_DIR in path.parents or path in PACKAGE_DIR.parents:
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Runs before Hypothesis's own configure, so our profile and seed are the ones it loads."""
    config.addinivalue_line(
        "markers", "conformance: a weightcheck conformance property (run with --loader)"
    )
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped with a reason when no GPU is present")
    spec = config.getoption("loader")
    if spec is None:
        if _targets_conformance(config):
            raise pytest.UsageError(
                "the weightcheck conformance suite needs --loader=MODULE[:ATTR] naming the "
                "loader under test (e.g. --loader=weightcheck.reference_models.reference_loader); the "
                "suite's own tests run without it: pytest tests"
            )
        return
    try:
        adapter = resolve_loader(spec)
    except LoaderSpecError as exc:
        raise pytest.UsageError(str(exc)) from None
    from .harness import Harness  # imports torch and the strategies: only when the suite runs
    from .profiles import DEFAULT_PROFILE, PROFILES, register_profiles

    register_profiles()
    if config.getoption("hypothesis_profile", None) is None:
        config.option.hypothesis_profile = DEFAULT_PROFILE
    profile = config.option.hypothesis_profile
    if profile not in PROFILES:
        from hypothesis import settings

        try:
            settings.get_profile(profile)
        except Exception:
            raise pytest.UsageError(
                f"unknown Hypothesis profile {profile!r}; weightcheck has {list(PROFILES)}"
            ) from None
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        # xdist runs one worker per core already; torch's own threads on tiny tensors only
        # oversubscribe the cores (measured: -n 2 went from 14.1 s to 8.3 s on 2 cores).
        import torch

        torch.set_num_threads(1)
    if config.getoption("hypothesis_seed", None) is None and _seeded(profile):
        seed = workerinput["weightcheck_seed"] if workerinput else random.getrandbits(32)
        config.option.hypothesis_seed = str(seed)
    config.stash[RUN_KEY] = _run_options(config)
    harness = Harness(adapter)
    config.stash[HARNESS_KEY] = harness
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Summary(config, harness), "weightcheck-summary")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "weightcheck-xdist")


def _run_options(config: pytest.Config) -> RunOptions:
    from .casefiles import CaseFileError, read_case_file
    from .expectations import ExpectationsError, parse, validate
    from .runner import PROPERTIES

    replay = config.getoption("replay")
    if replay:
        try:
            read_case_file(replay)
        except CaseFileError as exc:
            raise pytest.UsageError(f"--replay: {exc}") from None
    dirs = [Path(d) for d in config.getoption("regressions")]
    for d in dirs:
        if not d.is_dir():
            raise pytest.UsageError(f"--regressions {d}: not a directory")
    expectations = []
    if config.getoption("expect_fail"):
        try:
            expectations = parse(config.getoption("expect_fail"))
            stems = {p.stem for p in regression_files(dirs)}
            validate(expectations, (*PROPERTIES, "gpu"), FAMILY_NAMES, stems)
        except ExpectationsError as exc:
            raise pytest.UsageError(str(exc)) from None
    report = config.getoption("report_json")
    return RunOptions(
        out_dir=Path(config.getoption("weightcheck_out")),
        replay=Path(replay).resolve() if replay else None,
        regressions=dirs,
        expectations=expectations,
        report_json=Path(report) if report else None,
    )


def regression_files(dirs: list[Path]) -> list[Path]:
    files = sorted(BUNDLED_REGRESSIONS.glob("*.json"))
    for d in dirs:
        files += sorted(Path(d).glob("*.json"))
    return files


def _seeded(profile: str) -> bool:
    """Whether the run gets one printed seed shared by every xdist worker.

    Not for a derandomized profile (no seed at all), and not when the profile keeps an example
    database: Hypothesis switches its database off whenever a seed is given, and ``nightly``
    needs it so that last night's failures replay first (case files replay either way).
    """
    from .profiles import DATABASE_PROFILES
    from hypothesis import settings

    return not settings.get_profile(profile).derandomize and profile not in DATABASE_PROFILES


class _XdistHooks:
    """Every worker uses the controller's seed: same examples with ``-n auto`` as without."""

    def pytest_configure_node(self, node) -> None:
        node.workerinput["weightcheck_seed"] = node.config.getoption("hypothesis_seed", None)


def _derandomized(profile: str) -> bool:
    from hypothesis import settings

    return bool(settings.get_profile(profile).derandomize)


def _active(config: pytest.Config) -> bool:
    return HARNESS_KEY in config.stash


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not _active(config):
        return []
    harness = config.stash[HARNESS_KEY]
    caps = harness.loader.capabilities
    versions = ", ".join(
        f"{pkg} {_version(pkg)}" for pkg in ("weightcheck", "torch", "safetensors", "hypothesis")
    )
    seed = config.getoption("hypothesis_seed", None)
    if seed is not None:
        seed_text = f"seed {seed}"
    elif _derandomized(config.option.hypothesis_profile):
        seed_text = "derandomized (no seed)"
    else:
        seed_text = "random per test, example database on (replay with the case files)"
    lines = [
        f"weightcheck: loader {harness.loader.spec} ({harness.loader.name})",
        f"weightcheck: {versions}",
        f"weightcheck: hypothesis profile {config.option.hypothesis_profile}, {seed_text}",
    ]
    unsupported = sorted(set(FAMILY_NAMES) - caps.families) + sorted(set(FEATURES) - caps.features)
    if unsupported:
        lines.append(f"weightcheck: not supported by the loader: {', '.join(unsupported)}")
    run = config.stash[RUN_KEY]
    if run.replay:
        lines.append(f"weightcheck: replaying {run.replay}")
    return lines


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "(not installed)"


@dataclass(frozen=True)
class RegressionParam:
    path: Path
    property: str

    @property
    def id(self) -> str:
        return f"{self.path.stem}/{self.property}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "regression" not in metafunc.fixturenames:
        return
    config = metafunc.config
    params: list[RegressionParam] = []
    if _active(config):
        from .runner import PROPERTIES

        run = config.stash[RUN_KEY]
        files = [run.replay] if run.replay else regression_files(run.regressions)
        params = [RegressionParam(path, prop) for path in files for prop in PROPERTIES]
    metafunc.parametrize("regression", params, ids=[p.id for p in params])


def _item_info(item: pytest.Item) -> tuple[str | None, str | None, str | None]:
    """(property, family, regression case stem) of a conformance item."""
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec else {}
    regression = params.get("regression")
    if isinstance(regression, RegressionParam):
        return regression.property, None, regression.path.stem
    return getattr(item.module, "PROPERTY", None), params.get("family"), None


def stable_id(item: pytest.Item) -> str:
    prop, family, regression = _item_info(item)
    if regression is not None:
        return f"regression[{regression}]/{prop}"
    return f"{prop}[{family}]" if family else str(prop)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _active(config):
        return
    from .expectations import item_ids

    run = config.stash[RUN_KEY]
    caps = config.stash[HARNESS_KEY].loader.capabilities
    conformance = [i for i in items if i.get_closest_marker("conformance")]
    if run.replay:  # only the replayed case
        keep = [i for i in conformance if _item_info(i)[2] is not None]
        dropped = [i for i in items if i not in keep]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    # regression cases first: they are the explicit examples
    items.sort(key=lambda i: 0 if _item_info(i)[2] is not None else 1)
    for item in items:
        if not item.get_closest_marker("conformance"):
            continue
        prop, family, regression = _item_info(item)
        if family is not None and family not in caps.families:
            item.add_marker(pytest.mark.skip(reason=f"not supported by the loader: family {family}"))
        ids = item_ids(prop, family, regression)
        for entry in run.expectations:
            if entry.id in ids:
                item.add_marker(pytest.mark.xfail(reason=f"expected ({entry.id}): {entry.reason}", strict=True))


@pytest.fixture(scope="session")
def weightcheck(pytestconfig: pytest.Config) -> "Harness":
    """The loader under test and case drawing within its capabilities."""
    if not _active(pytestconfig):
        raise pytest.UsageError("the weightcheck fixture needs --loader=MODULE[:ATTR]")
    return pytestconfig.stash[HARNESS_KEY]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    if _active(item.config):
        item.config.stash[HARNESS_KEY].current = item.nodeid
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = yield
    config = item.config
    if not _active(config) or not item.get_closest_marker("conformance"):
        return report
    prop, family, regression = _item_info(item)
    if report.when == "setup" and report.skipped or report.when == "call":
        report.user_properties.append(
            (TEST_PROPERTY, {"id": stable_id(item), "property": prop, "family": family})
        )
    if report.when != "call":
        return report
    harness = config.stash[HARNESS_KEY]
    counts = harness.counts.pop(item.nodeid, None)
    if counts:
        report.user_properties.append((FEATURE_PROPERTY, dict(counts)))
    example = harness.last_example.pop(item.nodeid, None)
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


def _write_case(config, item, report, example, regression) -> Path | None:
    if regression is not None:
        return item.callspec.params["regression"].path
    if example is None:
        return None
    from .casefiles import write_case_file

    message = str(report.longrepr.reprcrash.message) if hasattr(report.longrepr, "reprcrash") else ""
    try:
        return write_case_file(
            config.stash[RUN_KEY].out_dir,
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
        run = self.config.stash[RUN_KEY]
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
            "versions": {p: _version(p) for p in ("weightcheck", "torch", "safetensors", "hypothesis")},
        }
