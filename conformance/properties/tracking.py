"""Exact tracking: the set ``load`` returns is exactly this rank's runtime parameters."""

from __future__ import annotations

from ..assertions import fail
from .base import NotSupported, Outcome, Property, context, expected, load_or_fail, tracking_problems


class Tracking(Property):
    name = "tracking"
    label = "tracking"
    checks_values = False

    def run(self, loader, case, extras):
        got = load_or_fail(loader, case, self.label)
        if got.loaded is None:
            raise NotSupported("load() returned None: the loader does no weight tracking")
        problems = tracking_problems(got.loaded, set(expected(case, got.tensors, loader).tracked))
        if problems:
            fail("tracking: the loaded set is wrong", problems, context(case))
        return Outcome()
