"""A loader that consumes the weight stream survives a hostile one.

Each tensor the stream hands out is overwritten once the loader asks for the next (a reused
staging buffer, as zero-copy readers have: SGLang #38908, #33582, #30240), and the stream is cut
into several ``load_weights`` groups at arbitrary points, not only per file; in FP8 cases a
weight and its scale are cut apart (in either order, as the stored order has them).  The state
must still be exactly the checkpoint's and the tracking exact.  A loader that reads the files
itself, and never takes the stream, is not exercised.
"""

from __future__ import annotations

from hypothesis import strategies as st

from weightcheck.fixtures.streams import HostileCheckpoint
from weightcheck.reference_models.families.rules import scale_name

from ..assertions import fail
from .base import (
    LoaderRaised,
    Outcome,
    Property,
    context,
    expected,
    load_written,
    mismatches,
    raised_title,
    tensors_of,
    tracking_problems,
    write,
)

SCALES = ("weight_scale", "weight_scale_inv")


def scale_pairs(case) -> list[tuple[int, int]]:
    """Stream positions of each FP8 weight and its scale, (first, second) in stored order."""
    order = {name: i for i, name in enumerate(case.recipe.names)}
    pairs = []
    for name, i in order.items():
        if name.endswith(".weight"):
            for suffix in SCALES:
                j = order.get(scale_name(name, suffix))
                if j is not None:
                    pairs.append((min(i, j), max(i, j)))
    return pairs


class HostileStream(Property):
    name = "hostile_stream"
    label = "hostile stream"
    not_exercised = "the loader reads the checkpoint files itself: it never took the weight stream"
    inputs = ("hostile stream",)

    def input_of(self, extras):
        return self.inputs[0]

    def draw(self, data, case, caps):
        n = len(case.recipe.names)
        splits = set(data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=6), label="cut the stream after"))
        pairs = scale_pairs(case)
        if pairs:
            first, second = data.draw(st.sampled_from(pairs), label="a weight and its scale apart")
            splits.add(second)
        return case, {"splits": sorted(s for s in splits if 0 < s < n)}

    def run(self, loader, case, extras):
        splits = extras.get("splits", [])
        tensors = tensors_of(case)
        presented = []

        def present(checkpoint):
            presented.append(HostileCheckpoint(checkpoint, splits))
            return presented[0]

        where = context(case, f"stream cut after tensors {splits}; each tensor overwritten once the next is asked for")
        try:
            got = load_written(loader, case, lambda path: write(case, path, tensors=tensors), tensors, present=present)
        except LoaderRaised as err:
            fail(raised_title(self.label), [str(err)], where)
        if not presented[0].consumed:
            return Outcome("the loader read the files itself", exercised=False)
        exp = expected(case, tensors, loader)
        problems = mismatches(got.state, exp, case, tensors=tensors)
        if got.loaded is not None:
            problems += tracking_problems(got.loaded, set(exp.tracked))
        if problems:
            fail(
                "hostile stream: a reused buffer or a cut stream changed what was loaded",
                problems,
                where,
            )
        return Outcome()
