"""Loading never writes to, adds to or removes from the checkpoint directory."""

from __future__ import annotations

from weightcheck.fixtures.materialize import directory_digest

from ..assertions import fail
from ..timing import section
from .base import LoaderRaised, Outcome, Property, call, context, raised_title, scratch, write


def digest(path):
    with section("digest"):
        return directory_digest(path)


class CheckpointUnchanged(Property):
    name = "checkpoint_unchanged"
    label = "checkpoint unchanged"
    checks_values = False

    def run(self, loader, case, extras):
        with scratch() as path:
            checkpoint = write(case, path)
            before = digest(path)
            try:
                model = call("build", loader.build, case.arch, case.placement)
                call("load", loader.load, model, checkpoint)
            except LoaderRaised as err:
                fail(raised_title(self.label), [str(err)], context(case))
            after = digest(path)
        problems = [
            f"{name}: {'added' if name not in before else 'removed' if name not in after else 'modified'}"
            for name in sorted(set(before) | set(after))
            if before.get(name) != after.get(name)
        ]
        if problems:
            fail("checkpoint changed: loading modified the checkpoint directory", problems, context(case))
        return Outcome()
