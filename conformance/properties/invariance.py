"""Order and sharding invariance: the same tensors in another key order or another split
across files load the same, correct state."""

from __future__ import annotations

from weightcheck.fixtures.case import CheckpointRecipe
from weightcheck.strategies import relayouts

from ..assertions import fail
from .base import Outcome, Property, context, expected, load_or_fail, mismatches


class Invariance(Property):
    """Both layouts are held to the oracle, not only to each other: a loader that loads nothing
    gives the same garbage twice, and that must not pass.  The message says which layout is
    wrong, so an order- or file-dependent bug reads as one."""

    name = "invariance"
    label = "order/sharding invariance"

    def draw(self, data, case, caps):
        sharded = caps.supports("sharded_checkpoint")
        other = data.draw(relayouts(case.recipe, sharded=sharded), label="second layout")
        return case, {"second_layout": [list(f) for f in other.files]}

    def run(self, loader, case, extras):
        files = extras.get("second_layout") or [list(reversed(case.recipe.names))]
        other = CheckpointRecipe(case.recipe.value_seed, files, case.recipe.format)
        title = "order/sharding invariance: two layouts of the same tensors"
        first = load_or_fail(loader, case, self.label)
        second = load_or_fail(loader, case, self.label, other)
        exp = expected(case, first.tensors, loader)
        wrong_first = mismatches(first.state, exp, case, tensors=first.tensors)
        wrong_second = mismatches(second.state, exp, case, tensors=first.tensors)
        if not wrong_first and not wrong_second:
            return Outcome()
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
