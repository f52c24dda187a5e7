"""The plugin's options and start-up: ``--loader`` and the run's other options, the Hypothesis
profile and seed, and the report header.

A bad ``--loader``, profile, case file or expectations file is a usage error (exit 4, one
``ERROR:`` line) before anything is collected.  Heavy modules (torch, the strategies) are
imported only once the suite is really in use.

(PYTEST_DONT_REWRITE: the plugin's modules import each other; nothing here asserts.)
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from weightcheck.capabilities import FEATURES, LoaderSpecError
from weightcheck.families import FAMILY_NAMES

from .collection import PYARGS_NAMES, targets_suite
from .protocol import resolve_loader
from .session import (
    SUITE_DIR,
    HARNESS_KEY,
    RUN_KEY,
    RunOptions,
    active,
    harness,
    regression_files,
    run_options,
    versions,
)


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
        action="append",
        default=[],
        help="known failures, one 'ID: reason' a line (ID: PROPERTY, PROPERTY[FAMILY], "
        "regression[CASE][/PROPERTY]); a listed test that passes fails the run (repeatable; "
        "added to the adapter's own, see --no-adapter-defaults)",
    )
    group.addoption("--report-json", metavar="FILE", help="write a JSON report (versioned schema)")
    group.addoption(
        "--shrink-budget",
        metavar="SECONDS",
        type=float,
        help="seconds of shrinking per failing test before the smallest example found so far is "
        "reported (default 3, 30 with the nightly profile; 'inf': shrink fully); a broken loader "
        "fails every test, and full shrinking of each would take minutes",
    )
    group.addoption(
        "--no-adapter-defaults",
        action="store_true",
        help="do not use the loader's own expectations file and regression cases (an adapter "
        "that ships them declares 'expectations' and 'regressions'); --expect-fail and "
        "--regressions then replace them instead of adding to them",
    )
    group.addoption(
        "--weightcheck-gpu-device",
        metavar="DEVICE",
        help="the device the GPU-marked tests run on (default: cuda, when torch sees one); "
        "'cpu' runs them as a stand-in, to check the GPU-marked part itself on a machine "
        "without a GPU",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Runs before Hypothesis's own configure, so our profile and seed are the ones it loads."""
    config.addinivalue_line(
        "markers", "conformance: a weightcheck conformance property (run with --loader)"
    )
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped with a reason when no GPU is present")
    spec = config.getoption("loader")
    if spec is None:
        if targets_suite(config):
            raise pytest.UsageError(
                "the weightcheck conformance suite needs --loader=MODULE[:ATTR] naming the "
                "loader under test (e.g. --loader=weightcheck.reference_models.reference_loader); "
                "the suite's own tests run without it: pytest tests"
            )
        return
    try:
        adapter = resolve_loader(spec)
    except LoaderSpecError as exc:
        raise pytest.UsageError(str(exc)) from None
    from .harness import Harness  # imports torch and the strategies: only when the suite runs

    profile = _choose_profile(config)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        # xdist runs one worker per core already; torch's own threads on tiny tensors only
        # oversubscribe the cores (measured: -n 2 went from 14.1 s to 8.3 s on 2 cores).
        import torch

        torch.set_num_threads(1)
    if config.getoption("hypothesis_seed", None) is None and _seeded(profile):
        seed = workerinput["weightcheck_seed"] if workerinput else random.getrandbits(32)
        config.option.hypothesis_seed = str(seed)
    _collect_the_suite(config)
    run = _run_options(config, adapter)
    config.stash[RUN_KEY] = run
    config.stash[HARNESS_KEY] = Harness(
        adapter, shrink_budget=run.shrink_budget, verbose=config.option.verbose
    )
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "weightcheck-xdist")


def _collect_the_suite(config: pytest.Config) -> None:
    """``pytest --loader=X`` with no test paths runs the installed suite, whatever the rootdir and
    ``testpaths`` of the project it is run from; paths that hold no conformance test are a
    usage error (a run given ``--loader`` that tests nothing must never pass)."""
    # (xdist workers parse the same command line, so they come to the same arguments)
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args = [str(SUITE_DIR)]
        return
    if config.option.pyargs:  # the package names, wherever the suite's files are installed
        config.args = [str(SUITE_DIR) if a in PYARGS_NAMES else a for a in config.args]
    if not targets_suite(config):
        loader = config.getoption("loader")
        raise pytest.UsageError(
            f"--loader={loader} was given, but {' '.join(config.args)} holds no weightcheck "
            f"conformance test: run the suite with `pytest --loader={loader}` (no test paths), "
            f"or add it to your own tests with `pytest YOUR_TESTS --pyargs weightcheck --loader={loader}`"
        )


def _choose_profile(config: pytest.Config) -> str:
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
    return profile


def _run_options(config: pytest.Config, adapter) -> RunOptions:
    from .casefiles import CaseFileError, read_case_file
    from .expectations import ExpectationsError, parse, validate
    from .report import MATRIX_FEATURES
    from .profiles import DEFAULT_SHRINK_BUDGET, SHRINK_BUDGETS
    from .properties import PROPERTY_NAMES

    replay = config.getoption("replay")
    if replay:
        try:
            read_case_file(replay)
        except CaseFileError as exc:
            raise pytest.UsageError(f"--replay: {exc}") from None
    defaults = None if config.getoption("no_adapter_defaults") else adapter.defaults()
    dirs = [Path(d) for d in config.getoption("regressions")]
    for d in dirs:
        if not d.is_dir():
            raise pytest.UsageError(f"--regressions {d}: not a directory")
    if defaults and defaults.regressions:
        dirs = [defaults.regressions, *dirs]
    files = [Path(f) for f in config.getoption("expect_fail")]
    if defaults and defaults.expectations:
        files = [defaults.expectations, *files]
    expectations = []
    try:
        for file in files:
            expectations += parse(file)
        stems = {p.stem for p in regression_files(dirs)}
        validate(expectations, (*PROPERTY_NAMES, "gpu"), FAMILY_NAMES, stems, MATRIX_FEATURES)
    except ExpectationsError as exc:
        raise pytest.UsageError(str(exc)) from None
    budget = config.getoption("shrink_budget")
    report = config.getoption("report_json")
    return RunOptions(
        out_dir=Path(config.getoption("weightcheck_out")),
        replay=Path(replay).resolve() if replay else None,
        regressions=dirs,
        expectations=expectations,
        report_json=Path(report) if report else None,
        shrink_budget=SHRINK_BUDGETS.get(config.option.hypothesis_profile, DEFAULT_SHRINK_BUDGET)
        if budget is None
        else budget,
    )


def _seeded(profile: str) -> bool:
    """Whether the run gets one printed seed shared by every xdist worker.

    Not for a derandomized profile (no seed at all), and not when the profile keeps an example
    database: Hypothesis switches its database off whenever a seed is given, and ``nightly``
    needs it so that last night's failures replay first (case files replay either way).
    """
    from hypothesis import settings

    from .profiles import DATABASE_PROFILES

    return not settings.get_profile(profile).derandomize and profile not in DATABASE_PROFILES


class _XdistHooks:
    """Every worker uses the controller's seed: same examples with ``-n auto`` as without."""

    def pytest_configure_node(self, node) -> None:
        node.workerinput["weightcheck_seed"] = node.config.getoption("hypothesis_seed", None)


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not active(config):
        return []
    loader = harness(config).loader
    caps = loader.capabilities
    versions_text = ", ".join(f"{pkg} {v}" for pkg, v in versions().items())
    seed = config.getoption("hypothesis_seed", None)
    if seed is not None:
        seed_text = f"seed {seed}"
    else:
        from hypothesis import settings

        if settings.get_profile(config.option.hypothesis_profile).derandomize:
            seed_text = "derandomized (no seed)"
        else:
            seed_text = "random per test, example database on (replay with the case files)"
    lines = [
        f"weightcheck: loader {loader.spec} ({loader.name})",
        f"weightcheck: {versions_text}",
        f"weightcheck: hypothesis profile {config.option.hypothesis_profile}, {seed_text}",
    ]
    unsupported = sorted(set(FAMILY_NAMES) - caps.families) + sorted(set(FEATURES) - caps.features)
    if unsupported:
        lines.append(f"weightcheck: not supported by the loader: {', '.join(unsupported)}")
    if caps.placements is not None:
        lines.append("weightcheck: the loader declares which placements it can hold (placements)")
    run = run_options(config)
    if run.replay:
        lines.append(f"weightcheck: replaying {run.replay}")
    return lines
