"""A loader's own completeness check is right (the optional ``check_loaded`` hook).

After a load with one needed tensor dropped (scales, input scales and biases of FP8 modules
included), ``check_loaded(model, loaded)`` must raise and name what is missing; after a
complete load it must stay silent (vLLM PR #41086: quantised modules were exempted wholesale,
so a missing bias of an FP8 layer went unnoticed).  An example whose load raised on the
dropped tensor never reaches the check: it does not count as exercising it.
"""

from __future__ import annotations

from hypothesis import strategies as st

from ..assertions import fail
from .base import (
    LoaderRaised,
    Outcome,
    Property,
    call,
    context,
    expected,
    names_any,
    needed_tensors,
    scratch,
    tensors_of,
    write,
)


class CheckLoaded(Property):
    name = "check_loaded"
    label = "completeness check"
    checks_values = False
    hooks = ("check_loaded",)
    not_exercised = (
        "the completeness check never ran after an incomplete load (load raised on every "
        "dropped tensor, or none was dropped)"
    )

    def draw(self, data, case, caps):
        dropped = st.none() | st.sampled_from(needed_tensors(case))
        return case, {"dropped": data.draw(dropped, label="dropped tensor (None: complete)")}

    def run(self, loader, case, extras):
        dropped = extras.get("dropped")
        hook = loader.hook("check_loaded")
        what = f"the checkpoint without {dropped}" if dropped else "the complete checkpoint"
        title = f"completeness check: check_loaded after loading {what}"
        where = context(case, f"dropped: {dropped}" if dropped else "dropped: nothing")
        recipe = case.recipe.without(dropped) if dropped else None
        with scratch() as path:
            tensors = tensors_of(case)
            checkpoint = write(case, path, recipe, tensors)
            try:
                model = call("build", loader.build, case.arch, case.placement)
                loaded = call("load", loader.load, model, checkpoint).loaded
            except LoaderRaised as err:
                if dropped and err.stage == "load":
                    return Outcome("load raised before the check", exercised=False)
                fail(f"completeness check: loader.{err.stage} raised, so the check never ran", [str(err)], where)
            try:
                call("check_loaded", hook, model, set(loaded) if loaded is not None else None)
            except LoaderRaised as err:  # the check's verdict
                if dropped is None:
                    fail(title, [f"it raised on a complete load: {err}"], where)
                named = expected(case, tensors, loader).dependents(dropped) | {dropped}
                if not names_any(err.exc, named):
                    fail(title, [f"it raised but names none of {sorted(named)}: {err}"], where)
                return Outcome("raised")
        if dropped is not None:
            dependents = sorted(expected(case, tensors, loader).dependents(dropped))
            fail(
                title,
                [f"it stayed silent although {dependents} were not initialised from the checkpoint"],
                where,
            )
        return Outcome("silent on a complete load", exercised=False)
