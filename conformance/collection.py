"""What a run of the suite collects, and how its tests are named.

Regression cases (the bundled corpus, ``--regressions``, or the one ``--replay`` case) are
parametrised into ``test_regressions.py`` and run first; every conformance test gets a stable,
path-free id (``PROPERTY[FAMILY]``, ``regression[CASE]/PROPERTY``) for ``--expect-fail``,
which marks the listed tests as strict expected failures.

(PYTEST_DONT_REWRITE: the plugin's modules import each other; nothing here asserts.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from .session import SUITE_DIR, active, harness, regression_files, run_options

PYARGS_NAMES = ("weightcheck", "weightcheck.conformance")


def targets_suite(config: pytest.Config) -> bool:
    """Whether the collected paths include the suite's tests."""
    for arg in config.args:
        target = arg.split("::")[0]
        if config.option.pyargs and not Path(target).exists():
            if target in PYARGS_NAMES or target.startswith("weightcheck.conformance."):
                return True
            continue
        path = (Path(config.invocation_params.dir) / target).resolve()
        if path == SUITE_DIR or SUITE_DIR in path.parents or path in SUITE_DIR.parents:
            return True
    return False


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
    if active(config):
        from .properties import PROPERTY_NAMES

        run = run_options(config)
        files = [run.replay] if run.replay else regression_files(run.regressions)
        params = [RegressionParam(path, prop) for path in files for prop in PROPERTY_NAMES]
    metafunc.parametrize("regression", params, ids=[p.id for p in params])


def item_info(item: pytest.Item) -> tuple[str | None, str | None, str | None]:
    """(property, family, regression case stem) of a conformance item."""
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec else {}
    regression = params.get("regression")
    if isinstance(regression, RegressionParam):
        return regression.property, None, regression.path.stem
    return getattr(item.module, "PROPERTY", None), params.get("family"), None


def stable_id(item: pytest.Item) -> str:
    prop, family, regression = item_info(item)
    if regression is not None:
        return f"regression[{regression}]/{prop}"
    return f"{prop}[{family}]" if family else str(prop)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not active(config):
        return
    from .expectations import item_ids

    run = run_options(config)
    caps = harness(config).loader.capabilities
    conformance = [i for i in items if i.get_closest_marker("conformance")]
    if run.replay:  # only the replayed case
        keep = [i for i in conformance if item_info(i)[2] is not None]
        dropped = [i for i in items if i not in keep]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    # regression cases first: they are the explicit examples
    items.sort(key=lambda i: 0 if item_info(i)[2] is not None else 1)
    for item in items:
        if not item.get_closest_marker("conformance"):
            continue
        prop, family, regression = item_info(item)
        if family is not None and family not in caps.families:
            item.add_marker(pytest.mark.skip(reason=f"not supported by the loader: family {family}"))
        ids = item_ids(prop, family, regression)
        for entry in run.expectations:
            if entry.id not in ids:
                continue
            if entry.when:  # judged per example, by the harness
                harness(config).known.setdefault(item.nodeid, []).append(entry)
            else:
                item.add_marker(pytest.mark.xfail(reason=f"expected ({entry.id}): {entry.reason}", strict=True))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    if active(item.config):
        harness(item.config).current = item.nodeid
    return (yield)
