"""A float tensor stored in another float dtype than the config's loads as its exact cast, or
is refused: never its bytes reinterpreted, never a parameter left in the stored dtype.

One float weight this rank needs (not an FP8 weight, not a scale) is stored in float32,
bfloat16 or float16, whichever the model dtype is not.  The expected state holds the stored
values cast to the model dtype (one rounding, torch's); a loader may instead raise naming it.
"""

from __future__ import annotations

from hypothesis import strategies as st

from weightcheck.arch import DTYPES
from weightcheck.fixtures.adversarial import write_files
from weightcheck.reference_models.families import checkpoint_specs

from ..assertions import fail
from .base import (
    LoaderRaised,
    Outcome,
    Property,
    context,
    expected,
    judge_refusal,
    load_written,
    mismatches,
    needed_tensors,
    tensors_of,
    tracking_problems,
)


class ForeignDtype(Property):
    name = "foreign_dtype"
    label = "foreign dtype"
    inputs = ("foreign dtype",)

    def input_of(self, extras):
        return self.inputs[0] if extras.get("stored_as") else None

    @staticmethod
    def _targets(case) -> list[str]:
        """Needed tensors in the model dtype (not FP8 weights, not float32 scales)."""
        specs = checkpoint_specs(case.arch, case.recipe.format)
        return [n for n in needed_tensors(case) if specs[n].dtype is None]

    def draw(self, data, case, caps):
        name = data.draw(st.sampled_from(self._targets(case)), label="tensor stored in another dtype")
        others = [d for d in DTYPES if d != case.arch.dtype]
        return case, {"name": name, "stored_as": data.draw(st.sampled_from(others), label="stored dtype")}

    def replay_extras(self, case):
        name = self._targets(case)[0]
        return [{"name": name, "stored_as": d} for d in DTYPES if d != case.arch.dtype]

    def run(self, loader, case, extras):
        name, stored_as = extras["name"], extras["stored_as"]
        tensors = tensors_of(case)
        stored = tensors[name].to(DTYPES[stored_as])
        bad = {**tensors, name: stored}
        headline = f"foreign dtype: {name} stored as {stored_as} in a {case.arch.dtype} model"
        where = context(case, f"stored as {stored_as}: {name}")
        try:
            got = load_written(loader, case, lambda path: write_files(case, path, case.recipe.files, bad), bad)
        except LoaderRaised as err:
            return judge_refusal(loader, case, tensors, name, err, headline, where)
        exp = expected(case, bad, loader)  # the stored values, cast to the model dtype
        problems = mismatches(got.state, exp, case, tensors=bad)
        if got.loaded is not None:
            problems += tracking_problems(got.loaded, set(exp.tracked))
        if problems:
            own = exp.dependents(name)
            if any(param in p for p in problems for param in own):
                fail(f"{headline}: not loaded as its exact cast", problems, where)
            fail(
                f"{headline}: its own parameters are right, the rest of the state is not "
                "(a loading bug independent of the dtype)",
                problems,
                where,
            )
        return Outcome("cast")
