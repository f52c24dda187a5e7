"""Reload: a second checkpoint loaded into an already built model replaces every weight.

This is the weight sync of RL training and the reload after LoRA wrapping; state that a loader
keeps between loads (shard records, pending tensors) must not leak into the second one."""

from __future__ import annotations

from dataclasses import replace

from weightcheck.strategies.checkpoints import value_seeds

from ..assertions import fail
from .base import (
    LoaderRaised,
    Outcome,
    Property,
    call,
    context,
    expected,
    mismatches,
    raised_title,
    scratch,
    tensors_of,
    tracking_problems,
    write,
)


class Reload(Property):
    name = "reload"
    label = "reload"

    def draw(self, data, case, caps):
        seeds = value_seeds().filter(lambda s: s != case.recipe.value_seed)
        return case, {"second_seed": data.draw(seeds, label="second value seed")}

    def run(self, loader, case, extras):
        second_seed = extras.get("second_seed", case.recipe.value_seed + 1)
        second = replace(case, recipe=replace(case.recipe, value_seed=second_seed))
        where = context(case, f"second value seed: {second_seed}")
        step = "the first build or load"
        try:
            with scratch() as first_path, scratch() as second_path:
                first_ckpt = write(case, first_path)
                second_tensors = tensors_of(second)
                second_ckpt = write(second, second_path, tensors=second_tensors)
                model = call("build", loader.build, case.arch, case.placement)
                call("load", loader.load, model, first_ckpt)
                step = "the second load"
                loaded = call("load", loader.load, model, second_ckpt).loaded
                state = call("state", loader.state, model)
        except LoaderRaised as err:
            fail(raised_title(self.label), [f"{err} (in {step})"], where)
        exp = expected(second, second_tensors, loader)
        first_values = {f"{n} (of the FIRST checkpoint)": t for n, t in tensors_of(case).items()}
        problems = mismatches(state, exp, case, tensors={**second_tensors, **first_values})
        if loaded is not None:
            problems += [f"second load: {p}" for p in tracking_problems(loaded, set(exp.tracked))]
        if problems:
            fail("reload: a second checkpoint loaded into the built model does not replace it", problems, where)
        return Outcome()
