"""Exact tracking: the set ``load`` returns is exactly this rank's runtime parameters, and what it
reports as unexpected (a ``LoadReport``) holds no weight of the checkpoint, only what may be
skipped (buffers, a tied ``lm_head``'s copy)."""

from __future__ import annotations

from ..assertions import fail
from .base import (
    NotSupported,
    Outcome,
    Property,
    context,
    expected,
    load_or_fail,
    skippable,
    tracking_problems,
)


class Tracking(Property):
    name = "tracking"
    label = "tracking"
    checks_values = False

    def run(self, loader, case, extras):
        got = load_or_fail(loader, case, self.label)
        if got.loaded is None:
            raise NotSupported("load() returned None: the loader does no weight tracking")
        problems = tracking_problems(got.loaded, set(expected(case, got.tensors, loader).tracked))
        wrongly_unexpected = sorted(got.unexpected - skippable(case))
        if wrongly_unexpected:
            problems.append(f"reported as unexpected, but they are weights of this model: {wrongly_unexpected}")
        if problems:
            fail("tracking: the loaded set is wrong", problems, context(case))
        return Outcome()
