"""The conformance properties, as plain functions of (loader, case).

Each raises ``PropertyFailure`` with an actionable message, or ``NotSupported`` when the loader
cannot be judged on it (no tracking).  They know nothing of pytest or Hypothesis: the test
modules in this package draw cases and call them, and the suite's own tests call them directly
against deliberately buggy loaders.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable


from fixtures.case import Case, CheckpointRecipe
from fixtures.materialize import case_tensors, directory_digest, scratch_dir, write_case
from reference_models.oracle import Expected, expected_state
from reference_models.oracle.expected import checkpoint_shapes, needed_sources

from .assertions import PropertyFailure, fail, state_mismatches
from .protocol import LoaderAdapter


class NotSupported(Exception):
    """The loader opts out of what this property checks (e.g. ``load`` returned None)."""


class LoaderRaised(Exception):
    def __init__(self, stage: str, exc: BaseException):
        self.stage, self.exc = stage, exc
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        super().__init__(f"loader.{stage} raised {type(exc).__name__}: {exc}{where}")


def _call(stage: str, fn: Callable, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # the loader's own failure, reported as such
        raise LoaderRaised(stage, exc) from exc


def context(case: Case, extra: str = "") -> str:
    text = f"case: {case.short()}\ncase json: {case.to_json()}"
    return f"{text}\n{extra}" if extra else text


def _load(loader: LoaderAdapter, case: Case, recipe: CheckpointRecipe | None = None):
    """Write, build, load, read state.  Returns (state, loaded, tensors).

    ``tensors`` are the case's full values, also when ``recipe`` leaves some out.
    """
    with scratch_dir() as path:
        tensors = case_tensors(case)
        checkpoint = write_case(case, path, recipe, tensors)
        model = _call("build", loader.build, case.arch, case.placement)
        loaded = _call("load", loader.load, model, checkpoint)
        state = _call("state", loader.state, model)
        return state, loaded, tensors


def _load_or_fail(loader, case, title, recipe=None):
    try:
        return _load(loader, case, recipe)
    except LoaderRaised as err:
        fail(title, [str(err)], context(case))
        raise AssertionError("unreachable")  # for type checkers


def _expected(case: Case, tensors) -> Expected:
    return expected_state(case.arch, case.placement, tensors)


def roundtrip(loader: LoaderAdapter, case: Case) -> None:
    """Every runtime parameter of the rank holds exactly the checkpoint data it should."""
    title = "round trip: the loaded state differs from the checkpoint"
    state, _, tensors = _load_or_fail(loader, case, title)
    problems = state_mismatches(state, _expected(case, tensors), checkpoint_shapes(case.arch))
    if problems:
        fail(title, problems, context(case))


def _tracking_problems(loaded: set[str], expected: set[str]) -> list[str]:
    problems = []
    missing, extra = sorted(expected - loaded), sorted(loaded - expected)
    if missing:
        problems.append(f"loaded from the checkpoint but not reported: {missing}")
    if extra:
        problems.append(f"reported as loaded but should not be: {extra}")
    return problems


def tracking(loader: LoaderAdapter, case: Case) -> None:
    """The set ``load`` returns is exactly this rank's runtime parameters."""
    title = "tracking: the loaded set is wrong"
    _, loaded, tensors = _load_or_fail(loader, case, title)
    if loaded is None:
        raise NotSupported("load() returned None: the loader does no weight tracking")
    problems = _tracking_problems(loaded, set(_expected(case, tensors).tracked))
    if problems:
        fail(title, problems, context(case))


def needed_tensors(case: Case) -> list[str]:
    """Checkpoint tensors some runtime parameter of this rank is built from, in a stable order."""
    return sorted(needed_sources(case.arch, case.placement))


def missing_tensor(loader: LoaderAdapter, case: Case, dropped: str) -> str:
    """Without ``dropped``, the loader raises, or leaves out exactly what depends on it.

    Returns "raised" or "reported" (how the loader detected it), for statistics.
    """
    title = f"missing tensor: {dropped} was removed from the checkpoint and this went unnoticed"
    try:
        state, loaded, tensors = _load(loader, case, case.recipe.without(dropped))
    except LoaderRaised as err:
        if err.stage == "load":
            return "raised"
        fail(title, [str(err)], context(case, f"dropped: {dropped}"))
    expected = _expected(case, tensors)
    dependents = expected.dependents(dropped)
    if loaded is None:
        fail(
            title,
            [
                "load() succeeded and returned None (no tracking), so nothing reports that "
                f"{sorted(dependents)} were not initialised; a loader without tracking must raise"
            ],
            context(case, f"dropped: {dropped}"),
        )
    problems = _tracking_problems(loaded, set(expected.tracked - dependents))
    problems += state_mismatches(
        state, expected, checkpoint_shapes(case.arch), only=expected.tracked - dependents
    )
    if problems:
        fail(
            title + f" (or other parameters suffered); {sorted(dependents)} depend on it",
            problems,
            context(case, f"dropped: {dropped}"),
        )
    return "reported"


def invariance(loader: LoaderAdapter, case: Case, other: CheckpointRecipe) -> None:
    """The same tensors in another key order or file split give the same, correct state.

    Both layouts are held to the oracle, not only to each other: a loader that loads nothing
    gives the same garbage twice, and that must not pass.  The message says which layout is
    wrong, so an order- or file-dependent bug reads as one.
    """
    title = "order/sharding invariance: two layouts of the same tensors"
    first, _, tensors = _load_or_fail(loader, case, title)
    second, _, _ = _load_or_fail(loader, case, title, other)
    expected = _expected(case, tensors)
    shapes = checkpoint_shapes(case.arch)
    wrong_first = state_mismatches(first, expected, shapes)
    wrong_second = state_mismatches(second, expected, shapes)
    if not wrong_first and not wrong_second:
        return
    if wrong_first and wrong_second:
        verdict = "both layouts load a wrong state"
        problems = [f"first layout: {p}" for p in wrong_first]
        problems += [f"second layout: {p}" for p in wrong_second if p not in wrong_first]
    else:
        verdict = f"only the {'second' if wrong_second else 'first'} layout loads a wrong state"
        problems = wrong_second or wrong_first
    layouts = "\n".join(
        f"{label} layout: {[len(f) for f in r.files]} tensors per file: {[list(f) for f in r.files]}"
        for label, r in (("first", case.recipe), ("second", other))
    )
    fail(f"{title}: {verdict}", problems, context(case, layouts))


def checkpoint_unchanged(loader: LoaderAdapter, case: Case) -> None:
    """Loading never writes to, adds to or removes from the checkpoint directory."""
    title = "checkpoint changed: loading modified the checkpoint directory"
    with scratch_dir() as path:
        checkpoint = write_case(case, path)
        before = directory_digest(path)
        try:
            model = _call("build", loader.build, case.arch, case.placement)
            _call("load", loader.load, model, checkpoint)
        except LoaderRaised as err:
            fail(title, [str(err)], context(case))
        after = directory_digest(path)
    problems = [
        f"{name}: {'added' if name not in before else 'removed' if name not in after else 'modified'}"
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    ]
    if problems:
        fail(title, problems, context(case))
