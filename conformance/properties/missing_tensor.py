"""A missing tensor is never silently accepted.

Drop any one checkpoint tensor this rank needs: the loader raises naming it (or a parameter
that needs it) while the complete checkpoint loads, or it reports as loaded exactly the
parameters that do not depend on it, and those still hold the right values.
"""

from __future__ import annotations

from hypothesis import strategies as st

from weightcheck.reference_models.families import checkpoint_specs

from ..assertions import fail
from .base import (
    LoaderRaised,
    Outcome,
    Property,
    context,
    expected,
    load_case,
    mismatches,
    names_any,
    needed_tensors,
    tensors_of,
    tracking_problems,
)


def alias_copies(case, name: str) -> list[str]:
    """Tensors of the case's checkpoint that hold a copy of ``name`` (a tied ``lm_head.weight``)."""
    specs = checkpoint_specs(case.arch, case.recipe.format)
    return [n for n in case.recipe.names if specs[n].role == "alias" and specs[n].fill == f"copy:{name}"]


class MissingTensor(Property):
    name = "missing_tensor"
    label = "missing tensor"

    def draw(self, data, case, caps):
        dropped = data.draw(st.sampled_from(needed_tensors(case)), label="dropped tensor")
        return case, {"dropped": dropped}

    def run(self, loader, case, extras):
        dropped = extras.get("dropped")
        outcome = Outcome()
        for name in [dropped] if dropped else needed_tensors(case):
            outcome = self.run_one(loader, case, name)
        return outcome

    def run_one(self, loader, case, dropped: str) -> Outcome:
        title = f"missing tensor: {dropped} was removed from the checkpoint and this went unnoticed"
        where = context(case, f"dropped: {dropped}")
        try:
            got = load_case(loader, case, case.recipe.without(dropped))
        except LoaderRaised as err:
            if err.stage != "load":
                fail(f"missing tensor: loader.{err.stage} raised, so nothing was checked", [str(err)], where)
            return self.raised(loader, case, dropped, err, where)
        exp = expected(case, got.tensors, loader)
        dependents = exp.dependents(dropped)
        if got.loaded is None:
            fail(
                title,
                [
                    "load() succeeded and returned None (no tracking), so nothing reports that "
                    f"{sorted(dependents)} were not initialised; a loader without tracking must raise"
                ],
                where,
            )
        copies = alias_copies(case, dropped)
        if got.loaded == set(exp.tracked) and copies:
            # A redundant copy of the dropped tensor is still in the checkpoint (a tied lm_head):
            # filling the parameter from it is as right as skipping it, if the values are right.
            problems = mismatches(got.state, exp, case, tensors=got.tensors)
            if not problems:
                return Outcome("filled from an alias copy")
            fail(title + f" (filled from {copies})", problems, where)
        independent = exp.tracked - dependents
        wrong_values = mismatches(got.state, exp, case, only=independent, tensors=got.tensors)
        tracking = tracking_problems(got.loaded, set(independent))
        if wrong_values:  # the first real difference: a loading bug of its own
            fail(
                f"missing tensor: with {dropped} removed, parameters that do not need it hold wrong "
                "values (a loading bug independent of the missing tensor)",
                wrong_values + tracking,
                where,
            )
        if tracking:
            unnoticed = sorted(got.loaded & dependents)
            headline = (
                f"{title}: {unnoticed} need it and are reported loaded anyway"
                if unnoticed
                else f"missing tensor: with {dropped} removed, the loaded set is wrong"
            )
            fail(headline, tracking, where)
        return Outcome("reported")

    def raised(self, loader, case, dropped: str, err: LoaderRaised, where: str) -> Outcome:
        """``load`` raised without ``dropped``: it must name what is missing, and the complete
        checkpoint must load (else the error says nothing about the missing tensor)."""
        named = expected(case, tensors_of(case), loader).dependents(dropped) | {dropped}
        if not names_any(err.exc, named):
            fail(
                f"missing tensor: load raised without {dropped}, but names none of {sorted(named)}",
                [str(err)],
                where,
            )
        try:
            load_case(loader, case)
        except LoaderRaised as control:
            fail(
                f"missing tensor: load raised without {dropped}, and also on the complete "
                "checkpoint, so the error says nothing about the missing tensor",
                [f"without {dropped}: {err}", f"complete checkpoint: {control}"],
                where,
            )
        return Outcome("raised")
