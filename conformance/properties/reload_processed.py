"""Reload after processing (RL weight sync): load, process, load a second checkpoint, process
again: the state equals a fresh load and processing of the second checkpoint, exactly.

For loaders with ``process_weights_after_loading``.  The state is compared in the layout the
loader reports after processing (whatever its repacking), against the same loader's fresh
model.  The second load's tracking is exact.  A loader that declares ``in_place_reload`` also
keeps every parameter's storage (``data_ptr``) through the second load and processing.  In 2026
vLLM and SGLang had nine reported bugs here (vLLM #42821, #48284, #57795; SGLang #30749, #18085).
"""

from __future__ import annotations

from dataclasses import replace

from weightcheck.strategies.checkpoints import value_seeds

from ..assertions import fail, same_bits
from .base import (
    LoaderRaised,
    Outcome,
    Property,
    call,
    context,
    expected,
    raised_title,
    scratch,
    tensors_of,
    tracking_problems,
    write,
)


def _processed(loader, case, checkpoints, process):
    """Build, then for each checkpoint: load and process; the state and each load's report."""
    model = call("build", loader.build, case.arch, case.placement)
    reports, pointers = [], []
    for checkpoint in checkpoints:
        if reports:
            pointers.append(_pointers(call("state", loader.state, model)))
        reports.append(call("load", loader.load, model, checkpoint))
        call("process_weights_after_loading", process, model)
    state = call("state", loader.state, model)
    pointers.append(_pointers(state))
    return state, reports, pointers


def _pointers(state) -> dict[str, int]:
    return {name: tensor.data_ptr() for name, tensor in state.items()}


def _differences(got, want) -> list[str]:
    problems = []
    if set(got) != set(want):
        problems.append(
            f"parameters only after the reload: {sorted(set(got) - set(want))}; only in a fresh "
            f"model: {sorted(set(want) - set(got))}"
        )
    for name in sorted(set(got) & set(want)):
        a, b = got[name].detach().cpu(), want[name].detach().cpu()
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{name}: {list(a.shape)} {a.dtype} after the reload, {list(b.shape)} {b.dtype} fresh")
        elif not same_bits(a, b):
            problems.append(f"{name}: its values differ from a fresh load and processing of the second checkpoint")
    return problems


class ReloadAfterProcessing(Property):
    name = "reload_processed"
    label = "reload after processing"
    hooks = ("process_weights_after_loading",)
    inputs = ("reload after processing",)

    def input_of(self, extras):
        return self.inputs[0]

    def draw(self, data, case, caps):
        seeds = value_seeds().filter(lambda s: s != case.recipe.value_seed)
        return case, {"second_seed": data.draw(seeds, label="second value seed")}

    def run(self, loader, case, extras):
        process = loader.hook("process_weights_after_loading")
        second_seed = extras.get("second_seed", case.recipe.value_seed + 1)
        second = replace(case, recipe=replace(case.recipe, value_seed=second_seed))
        where = context(case, f"second value seed: {second_seed}")
        with scratch() as first_path, scratch() as second_path:
            first_ckpt = write(case, first_path)
            second_tensors = tensors_of(second)
            second_ckpt = write(second, second_path, tensors=second_tensors)
            try:
                synced, reports, pointers = _processed(loader, case, [first_ckpt, second_ckpt], process)
            except LoaderRaised as err:
                fail(raised_title(self.label), [f"{err} (load, process, load the second, process)"], where)
            try:
                fresh, _, _ = _processed(loader, case, [second_ckpt], process)
            except LoaderRaised as err:
                fail(raised_title(self.label), [f"{err} (a fresh load of the second checkpoint, then process)"], where)
        problems = _differences(synced, fresh)
        loaded = reports[-1].loaded
        if loaded is not None:
            exp = expected(second, second_tensors, loader)
            problems += [f"second load: {p}" for p in tracking_problems(set(loaded), set(exp.tracked))]
        if loader.capabilities.supports("in_place_reload"):
            before, after = pointers
            moved = sorted(n for n in before if after.get(n) != before[n])
            if moved:
                problems.append(
                    f"declared in_place_reload, but these parameters have new storage after the "
                    f"reload and processing: {moved}"
                )
        if problems:
            fail(
                "reload after processing: the synced model differs from a fresh load of the second checkpoint",
                problems,
                where,
            )
        return Outcome()
