"""Round trip: every runtime parameter of the rank holds exactly its checkpoint data."""

from __future__ import annotations

from ..assertions import fail
from .base import Outcome, Property, context, expected, load_or_fail, mismatches


class Roundtrip(Property):
    name = "roundtrip"
    label = "round trip"

    def run(self, loader, case, extras):
        got = load_or_fail(loader, case, self.label)
        problems = mismatches(got.state, expected(case, got.tensors, loader), case, tensors=got.tensors)
        if problems:
            fail("round trip: the loaded state differs from the checkpoint", problems, context(case))
        return Outcome()
