"""The weightcheck pytest plugin (entry point ``pytest11: weightcheck``).

It stays inert unless the conformance tests are collected or ``--loader`` is given, so
installing weightcheck never changes another project's test run.
"""

from __future__ import annotations

import random
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .protocol import FAMILIES, FEATURES, LoaderSpecError, resolve_loader

if TYPE_CHECKING:
    from .harness import Harness

PACKAGE_DIR = Path(__file__).resolve().parent
HARNESS_KEY = pytest.StashKey["Harness"]()
SEED_KEY = pytest.StashKey[int]()
FEATURE_PROPERTY = "weightcheck_features"
EXTRA_FEATURES = (
    "gqa_replicated",
    "redundant_lm_head",
    "buffers_in_checkpoint",
    "shared_expert",
    "mixed_dense_moe",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("weightcheck", "weightcheck conformance suite")
    group.addoption(
        "--loader",
        metavar="MODULE[:ATTR]",
        help="the loader under test: an object with build(arch, placement) and "
        "load(model, checkpoint) (attribute 'loader' of MODULE by default, else MODULE itself)",
    )


def _targets_conformance(config: pytest.Config) -> bool:
    """Whether the collected paths include this package's tests."""
    for arg in config.args:
        target = arg.split("::")[0]
        if config.option.pyargs and not Path(target).exists():
            if target == "conformance" or target.startswith("conformance."):
                return True
            continue
        path = (Path(config.invocation_params.dir) / target).resolve()
        if path == PACKAGE_DIR or PACKAGE_DIR in path.parents or path in PACKAGE_DIR.parents:
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Runs before Hypothesis's own configure, so our profile and seed are the ones it loads."""
    spec = config.getoption("loader")
    if spec is None:
        if _targets_conformance(config):
            raise pytest.UsageError(
                "the weightcheck conformance suite needs --loader=MODULE[:ATTR] naming the "
                "loader under test (e.g. --loader=reference_models.reference_loader); the "
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
    if config.getoption("hypothesis_seed", None) is None and not _derandomized(profile):
        workerinput = getattr(config, "workerinput", None)
        seed = workerinput["weightcheck_seed"] if workerinput else random.getrandbits(32)
        config.option.hypothesis_seed = str(seed)
    harness = Harness(adapter)
    config.stash[HARNESS_KEY] = harness
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Summary(harness), "weightcheck-summary")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "weightcheck-xdist")


def _derandomized(profile: str) -> bool:
    from hypothesis import settings

    return bool(settings.get_profile(profile).derandomize)


class _XdistHooks:
    """Every worker uses the controller's seed: same examples with ``-n auto`` as without."""

    def pytest_configure_node(self, node) -> None:
        seed = node.config.getoption("hypothesis_seed", None)
        node.workerinput["weightcheck_seed"] = seed


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
    profile = config.option.hypothesis_profile
    seed_text = f"seed {seed}" if seed is not None else "derandomized (no seed)"
    lines = [
        f"weightcheck: loader {harness.loader.spec} ({harness.loader.name})",
        f"weightcheck: {versions}",
        f"weightcheck: hypothesis profile {profile}, {seed_text}",
    ]
    unsupported = sorted(set(FAMILIES) - caps.families) + sorted(set(FEATURES) - caps.features)
    if unsupported:
        lines.append(f"weightcheck: not supported by the loader: {', '.join(unsupported)}")
    return lines


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _active(config):
        return
    caps = config.stash[HARNESS_KEY].loader.capabilities
    for item in items:
        callspec = getattr(item, "callspec", None)
        family = callspec.params.get("family") if callspec else None
        if family is not None and family not in caps.families:
            item.add_marker(
                pytest.mark.skip(reason=f"not supported by the loader: family {family}")
            )


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
    if not _active(config) or report.when != "call":
        return report
    counts = config.stash[HARNESS_KEY].counts.pop(item.nodeid, None)
    if counts:
        report.user_properties.append((FEATURE_PROPERTY, dict(counts)))
    if report.failed:
        report.sections.append(("weightcheck: replay", _replay_command(item)))
    return report


def _replay_command(item: pytest.Item) -> str:
    config = item.config
    parts = ["pytest", f"--loader={config.getoption('loader')}"]
    parts.append(f"--hypothesis-profile={config.option.hypothesis_profile}")
    seed = config.getoption("hypothesis_seed", None)
    if seed is not None:
        parts.append(f"--hypothesis-seed={seed}")
    parts.append(f"'{item.path}::{item.name}'")
    return (
        " ".join(parts)
        + "\n(the failing example is also saved in the Hypothesis example database, "
        "which replays it first)"
    )


class _Summary:
    """Feature counts for the whole run, gathered on the controller.

    Counts travel in each report's ``user_properties``, so they survive ``-n auto``.
    """

    def __init__(self, harness: "Harness") -> None:
        self.harness = harness
        self.counts: Counter = Counter()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for key, value in getattr(report, "user_properties", ()):
            if key == FEATURE_PROPERTY:
                self.counts.update(value)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        caps = self.harness.loader.capabilities
        tr, counts = terminalreporter, self.counts
        tr.section("weightcheck: what the examples exercised")
        tr.write_line(f"examples run: {counts.get('examples', 0)}")
        rows = [(f"family {f}", counts.get(f"family={f}", 0), f in caps.families) for f in FAMILIES]
        rows += [(name, counts.get(name, 0), name in caps.features) for name in FEATURES]
        rows += [(name, counts.get(name, 0), True) for name in EXTRA_FEATURES]
        for label, count, supported in rows:
            if not supported:
                status = "not supported by the loader"
            elif count == 0:
                status = "NOT EXERCISED"
            else:
                status = f"{count} examples"
            tr.write_line(f"  {label:<24} {status}")
