"""What every property shares: the ``Property`` object, and loading a case through a loader.

A property is an object: its name, when it applies (families, capabilities, optional hooks),
what it draws beyond the case, and how it runs one example.  The harness, the replay of case
files, the mutation matrix and the benchmark all go through the same objects, so a new property
is one module in this package and one test module in ``weightcheck.conformance``.

Runs raise ``PropertyFailure`` (assertions) with an actionable message, or ``NotSupported``
when the loader opts out of what is checked; they return an ``Outcome`` saying whether the
example really exercised the property (a run that could not check anything is not a pass).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import torch
from hypothesis import strategies as st

from weightcheck.capabilities import Capabilities
from weightcheck.fixtures.case import Case, CheckpointRecipe
from weightcheck.fixtures.materialize import case_tensors, scratch_dir, write_case
from weightcheck.reference_models.families import checkpoint_specs
from weightcheck.reference_models.oracle import Expected, expected_state
from weightcheck.reference_models.oracle.expected import checkpoint_shapes, needed_sources

from ..assertions import detailed, fail, state_mismatches
from ..protocol import AdapterError, LoaderAdapter
from ..timing import section


class NotSupported(Exception):
    """The loader opts out of what this property checks (e.g. ``load`` returned None)."""


class LoaderRaised(Exception):
    """The loader under test raised: the stage (build, load, state, a hook) and where."""

    def __init__(self, stage: str, exc: BaseException):
        self.stage, self.exc = stage, exc
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        super().__init__(f"loader.{stage} raised {type(exc).__name__}: {exc}{where}")


@dataclass(frozen=True)
class Outcome:
    """How one example went.  ``exercised`` False: it could not check what the property is
    about (e.g. ``load`` raised before the completeness check could run); a test whose
    examples never exercised the property is reported as not exercised, never as passed."""

    note: str = ""
    exercised: bool = True


class Property:
    """One conformance property.  Subclasses set the class attributes and ``run``.

    ``checks_values``: whether a pass establishes that the loaded values are right for the
    features its examples used (the conformance matrix counts only those).  ``hooks``: optional
    loader hooks it needs; ``feature``: a capability it needs; ``lora``: only for families with
    LoRA wrapping; ``max_ranks``: a bound on tp x pp x ep for properties that load every rank.
    """

    name: ClassVar[str]
    label: ClassVar[str]  # how failure headlines name it: "round trip", "tracking", ...
    checks_values: ClassVar[bool] = True
    hooks: ClassVar[tuple[str, ...]] = ()
    feature: ClassVar[str | None] = None
    lora: ClassVar[bool] = False
    max_ranks: ClassVar[int | None] = None
    not_exercised: ClassVar[str] = ""  # why no example exercised it, for the report
    # Kinds of input the property brings (rows of the conformance matrix), and which one an
    # example brought (from its extras).
    inputs: ClassVar[tuple[str, ...]] = ()

    def skip_reason(self, family: str, loader: LoaderAdapter) -> str | None:
        """Why the property is not judged for ``family`` on this loader (None: it is)."""
        from weightcheck.families import family as family_entry

        caps = loader.capabilities
        if family not in caps.families:
            return f"not supported by the loader: family {family}"
        if self.lora and not family_entry(family).lora:
            return f"not applicable: {family} has no LoRA wrapping"
        if self.feature and not caps.supports(self.feature):
            return f"not supported by the loader: {self.feature}"
        missing = [h for h in self.hooks if loader.hook(h) is None]
        if missing:
            return f"not supported by the loader: no {' or '.join(missing)} hook"
        return None

    def not_applicable(self, case: Case) -> str | None:
        """Why the property does not apply to ``case`` (None: it does)."""
        return None

    def draw(self, data: st.DataObject, case: Case, caps: Capabilities) -> tuple[Case, dict[str, Any]]:
        """What the property draws beyond the case: ``(case, extras)``; extras are plain data,
        written to the case file and given back to ``run`` on replay."""
        return case, {}

    def run(self, loader: LoaderAdapter, case: Case, extras: Mapping[str, Any]) -> Outcome:
        raise NotImplementedError

    def input_of(self, extras: Mapping[str, Any]) -> str | None:
        """Which of ``inputs`` an example with these extras brings (None: none)."""
        kind = extras.get("kind")
        return kind if kind in self.inputs else None

    def replay_extras(self, case: Case) -> list[dict[str, Any]]:
        """What to run a case file of another property with (it holds none of this property's
        draws): by default one run with no extras; properties whose draws are essential give a
        fixed choice (e.g. one of each kind)."""
        return [{}]

    def __repr__(self) -> str:
        return f"<property {self.name}>"


# --- running the loader ---------------------------------------------------------------------


def call(stage: str, fn: Callable, *args: Any) -> Any:
    """Call the loader's ``stage``; its exceptions become ``LoaderRaised``."""
    with section(f"loader.{stage}"):
        try:
            return fn(*args)
        except AdapterError:
            raise  # the adapter breaks the protocol: not a loading failure
        except Exception as exc:  # the loader's own failure, reported as such
            raise LoaderRaised(stage, exc) from exc


def context(case: Case, extra: str = "") -> str:
    """The case in one line (the case file holds all of it; -vv adds it here as JSON)."""
    text = f"case: {case.short()}"
    if detailed():
        text += f"\ncase json: {case.to_json()}"
    return f"{text}\n{extra}" if extra else text


def tensors_of(case: Case, recipe: CheckpointRecipe | None = None) -> dict[str, torch.Tensor]:
    with section("values"):
        return case_tensors(case, recipe)


def write(case: Case, path, recipe: CheckpointRecipe | None = None, tensors=None):
    if tensors is None:
        tensors = tensors_of(case, recipe)
    with section("write"):
        return write_case(case, path, recipe, tensors)


class scratch:
    """A scratch checkpoint directory, removed on exit (timed as ``scratch``)."""

    def __enter__(self):
        with section("scratch"):
            self._cm = scratch_dir()
            return self._cm.__enter__()

    def __exit__(self, *exc):
        with section("scratch"):
            return self._cm.__exit__(*exc)


@dataclass
class Loaded:
    """One build + load + state of a case: what the loader gave, and the case's full values."""

    state: dict[str, torch.Tensor]
    loaded: set[str] | None
    tensors: dict[str, torch.Tensor]
    model: Any = field(default=None, repr=False)
    unexpected: frozenset[str] = frozenset()


def load_case(
    loader: LoaderAdapter,
    case: Case,
    recipe: CheckpointRecipe | None = None,
    *,
    keep_model: bool = False,
) -> Loaded:
    """Write ``case`` (or ``recipe`` of it), build, load, read the state.

    ``tensors`` are the case's full values, also when ``recipe`` leaves some out.  Raises
    ``LoaderRaised`` when the loader does.
    """
    tensors = tensors_of(case)
    return load_written(
        loader, case, lambda path: write(case, path, recipe, tensors), tensors, keep_model=keep_model
    )


def load_written(
    loader: LoaderAdapter,
    case: Case,
    writer: Callable[[Any], Any],
    tensors: dict[str, torch.Tensor],
    *,
    keep_model: bool = False,
    present: Callable[[Any], Any] | None = None,
) -> Loaded:
    """Build and load a checkpoint ``writer(path)`` writes (it returns the ``Checkpoint``);
    ``present`` changes how the checkpoint is handed to the loader (a hostile stream)."""
    with scratch() as path:
        checkpoint = writer(path)
        if present is not None:
            checkpoint = present(checkpoint)
        model = call("build", loader.build, case.arch, case.placement)
        report = call("load", loader.load, model, checkpoint)
        state = call("state", loader.state, model)
        loaded = None if report.loaded is None else set(report.loaded)
        return Loaded(state, loaded, tensors, model if keep_model else None, report.unexpected)


def control_loads(loader: LoaderAdapter, case: Case, headline: str, refusal: LoaderRaised, where: str) -> None:
    """The well-formed checkpoint of the same case must load: a loader that raises on it too
    says nothing about what was wrong with the bad one."""
    try:
        load_case(loader, case)
    except LoaderRaised as control:
        fail(
            f"{headline}, and also on the well-formed checkpoint, so the error says nothing about it",
            [f"bad checkpoint: {refusal}", f"well-formed checkpoint: {control}"],
            where,
        )


def judge_refusal(
    loader: LoaderAdapter, case: Case, tensors, name: str, err: LoaderRaised, headline: str, where: str
) -> Outcome:
    """A load that raised on a checkpoint with one bad tensor ``name``: right only if ``load``
    (not ``build``) raised, naming the tensor or a parameter that needs it, and the
    well-formed checkpoint loads."""
    if err.stage != "load":
        fail(f"{headline}: loader.{err.stage} raised, so nothing was checked", [str(err)], where)
    named = expected(case, tensors, loader).dependents(name) | {name}
    if not names_any(err.exc, named):
        fail(f"{headline}: load raised, but names none of {sorted(named)}", [str(err)], where)
    control_loads(loader, case, f"{headline}: load raised naming it", err, where)
    return Outcome("raised")


def raised_title(label: str) -> str:
    """The headline of a property whose loader raised: it never claims a comparison."""
    return f"{label}: the loader raised, so nothing was compared"


def load_or_fail(loader: LoaderAdapter, case: Case, label: str, recipe=None) -> Loaded:
    try:
        return load_case(loader, case, recipe)
    except LoaderRaised as err:
        fail(raised_title(label), [str(err)], context(case))


def expected(case: Case, tensors, loader: LoaderAdapter) -> Expected:
    """The oracle's state for this rank, in the form the loader declares for FP8 checkpoints."""
    dequantized = loader.capabilities.supports("fp8_dequantized_state")
    with section("oracle"):
        return expected_state(case.arch, case.placement, tensors, case.recipe.format, dequantized)


def shapes(case: Case) -> Mapping[str, tuple[int, ...]]:
    return checkpoint_shapes(case.arch, case.recipe.format)


def mismatches(state, exp: Expected, case: Case, only=None, tensors=None) -> list[str]:
    """Differences from the oracle; with the checkpoint's ``tensors``, the message says which
    other tensor a wrong region holds."""
    with section("compare"):
        return state_mismatches(state, exp, shapes(case), only=only, tensors=tensors)


def tracking_problems(loaded: set[str], wanted: set[str]) -> list[str]:
    problems = []
    missing, extra = sorted(wanted - loaded), sorted(loaded - wanted)
    if missing:
        problems.append(f"loaded from the checkpoint but not reported: {missing}")
    if extra:
        problems.append(f"reported as loaded but should not be: {extra}")
    return problems


def skippable(case: Case) -> frozenset[str]:
    """Checkpoint tensors of the case that are no weights (buffers, a tied lm_head's copy): a
    loader may skip them, silently or reporting them as unexpected."""
    specs = checkpoint_specs(case.arch, case.recipe.format)
    return frozenset(n for n in case.recipe.names if specs[n].role != "weight")


def needed_tensors(case: Case) -> list[str]:
    """Checkpoint tensors some runtime parameter of this rank is built from, in a stable order."""
    with section("oracle"):
        return sorted(needed_sources(case.arch, case.placement, case.recipe.format))


def names_any(exc: BaseException, names) -> bool:
    """Whether an error message names any of ``names`` (the dropped tensor or its dependents)."""
    text = f"{type(exc).__name__}: {exc}"
    return any(name in text for name in names)
