"""The conformance properties, as plain functions of (loader, case).

Each raises ``assertions.PropertyFailure`` with an actionable message, or ``NotSupported`` when the loader
cannot be judged on it (no tracking).  They know nothing of pytest or Hypothesis: the test
modules in this package draw cases and call them, and the suite's own tests call them directly
against deliberately buggy loaders.
"""

from __future__ import annotations

import traceback
from dataclasses import replace
from typing import Any, Callable

import torch


from weightcheck.fixtures.case import Case, CheckpointRecipe
from weightcheck.fixtures.materialize import case_tensors, directory_digest, scratch_dir, write_case
from weightcheck.reference_models.families import checkpoint_specs
from weightcheck.reference_models.oracle import Expected, expected_state, source_view
from weightcheck.reference_models.oracle.expected import checkpoint_shapes, needed_sources

from .assertions import fail, same_bits, state_mismatches
from .protocol import LoaderAdapter


class NotSupported(Exception):
    """The loader opts out of what this property checks (e.g. ``load`` returned None)."""


class LoaderRaised(Exception):
    def __init__(self, stage: str, exc: BaseException):
        self.stage, self.exc = stage, exc
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        super().__init__(f"loader.{stage} raised {type(exc).__name__}: {exc}{where}")


def _call(stage: str, fn: Callable, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # the loader's own failure, reported as such
        raise LoaderRaised(stage, exc) from exc


def context(case: Case, extra: str = "") -> str:
    text = f"case: {case.short()}\ncase json: {case.to_json()}"
    return f"{text}\n{extra}" if extra else text


def _load(loader: LoaderAdapter, case: Case, recipe: CheckpointRecipe | None = None):
    """Write, build, load, read state.  Returns (state, loaded, tensors).

    ``tensors`` are the case's full values, also when ``recipe`` leaves some out.
    """
    with scratch_dir() as path:
        tensors = case_tensors(case)
        checkpoint = write_case(case, path, recipe, tensors)
        model = _call("build", loader.build, case.arch, case.placement)
        loaded = _call("load", loader.load, model, checkpoint)
        state = _call("state", loader.state, model)
        return state, loaded, tensors


def _load_or_fail(loader, case, title, recipe=None):
    try:
        return _load(loader, case, recipe)
    except LoaderRaised as err:
        fail(title, [str(err)], context(case))


def _expected(case: Case, tensors, loader: LoaderAdapter) -> Expected:
    """The oracle's state for this rank, in the form the loader declares for FP8 checkpoints."""
    dequantized = loader.capabilities.supports("fp8_dequantized_state")
    return expected_state(case.arch, case.placement, tensors, case.recipe.format, dequantized)


def _shapes(case: Case):
    return checkpoint_shapes(case.arch, case.recipe.format)


def roundtrip(loader: LoaderAdapter, case: Case) -> None:
    """Every runtime parameter of the rank holds exactly the checkpoint data it should."""
    title = "round trip: the loaded state differs from the checkpoint"
    state, _, tensors = _load_or_fail(loader, case, title)
    problems = state_mismatches(state, _expected(case, tensors, loader), _shapes(case))
    if problems:
        fail(title, problems, context(case))


def _tracking_problems(loaded: set[str], expected: set[str]) -> list[str]:
    problems = []
    missing, extra = sorted(expected - loaded), sorted(loaded - expected)
    if missing:
        problems.append(f"loaded from the checkpoint but not reported: {missing}")
    if extra:
        problems.append(f"reported as loaded but should not be: {extra}")
    return problems


def tracking(loader: LoaderAdapter, case: Case) -> None:
    """The set ``load`` returns is exactly this rank's runtime parameters."""
    title = "tracking: the loaded set is wrong"
    _, loaded, tensors = _load_or_fail(loader, case, title)
    if loaded is None:
        raise NotSupported("load() returned None: the loader does no weight tracking")
    problems = _tracking_problems(loaded, set(_expected(case, tensors, loader).tracked))
    if problems:
        fail(title, problems, context(case))


def needed_tensors(case: Case) -> list[str]:
    """Checkpoint tensors some runtime parameter of this rank is built from, in a stable order."""
    return sorted(needed_sources(case.arch, case.placement, case.recipe.format))


def missing_tensor(loader: LoaderAdapter, case: Case, dropped: str) -> str:
    """Without ``dropped``, the loader raises, or leaves out exactly what depends on it.

    Returns "raised" or "reported" (how the loader detected it), for statistics.
    """
    title = f"missing tensor: {dropped} was removed from the checkpoint and this went unnoticed"
    try:
        state, loaded, tensors = _load(loader, case, case.recipe.without(dropped))
    except LoaderRaised as err:
        if err.stage == "load":
            return "raised"
        fail(title, [str(err)], context(case, f"dropped: {dropped}"))
    expected = _expected(case, tensors, loader)
    dependents = expected.dependents(dropped)
    if loaded is None:
        fail(
            title,
            [
                "load() succeeded and returned None (no tracking), so nothing reports that "
                f"{sorted(dependents)} were not initialised; a loader without tracking must raise"
            ],
            context(case, f"dropped: {dropped}"),
        )
    if loaded == set(expected.tracked) and _alias_copies(case, dropped):
        # A redundant copy of the dropped tensor is still in the checkpoint (a tied lm_head):
        # filling the parameter from it is as right as skipping it, if the values are right.
        problems = state_mismatches(state, expected, _shapes(case))
        if not problems:
            return "filled from an alias copy"
        fail(title + f" (filled from {_alias_copies(case, dropped)})", problems, context(case, f"dropped: {dropped}"))
    problems = _tracking_problems(loaded, set(expected.tracked - dependents))
    problems += state_mismatches(
        state, expected, _shapes(case), only=expected.tracked - dependents
    )
    if problems:
        fail(
            title + f" (or other parameters suffered); {sorted(dependents)} depend on it",
            problems,
            context(case, f"dropped: {dropped}"),
        )
    return "reported"


def check_loaded(loader: LoaderAdapter, case: Case, dropped: str | None) -> str:
    """The loader's own completeness check raises after an incomplete load, naming what is
    missing, and stays silent after a complete one (vLLM PR #41086: quantised modules were
    exempted wholesale, so a missing bias of an FP8 layer went unnoticed).

    Returns how the example went, for statistics.
    """
    hook = loader.hook("check_loaded")
    if hook is None:
        raise NotSupported("the loader has no check_loaded(model, loaded) hook")
    what = f"the checkpoint without {dropped}" if dropped else "the complete checkpoint"
    title = f"completeness check: check_loaded after loading {what}"
    extra = f"dropped: {dropped}" if dropped else "dropped: nothing"
    recipe = case.recipe.without(dropped) if dropped else None
    with scratch_dir() as path:
        tensors = case_tensors(case)
        checkpoint = write_case(case, path, recipe, tensors)
        try:
            model = _call("build", loader.build, case.arch, case.placement)
            loaded = _call("load", loader.load, model, checkpoint)
        except LoaderRaised as err:
            if dropped and err.stage == "load":
                return "load raised before the check"
            fail(title, [str(err)], context(case, extra))
        try:
            hook(model, set(loaded) if loaded is not None else None)
        except Exception as exc:  # the check's verdict
            message = f"{type(exc).__name__}: {exc}"
            if dropped is None:
                fail(title, [f"it raised on a complete load: {message}"], context(case, extra))
            named = _expected(case, tensors, loader).dependents(dropped) | {dropped}
            if not any(name in str(exc) for name in named):
                fail(
                    title,
                    [f"it raised but names none of {sorted(named)}: {message}"],
                    context(case, extra),
                )
            return "raised"
    if dropped is not None:
        dependents = sorted(_expected(case, tensors, loader).dependents(dropped))
        fail(
            title,
            [f"it stayed silent although {dependents} were not initialised from the checkpoint"],
            context(case, extra),
        )
    return "silent on a complete load"


def _alias_copies(case: Case, name: str) -> list[str]:
    """Tensors of the case's checkpoint that hold a copy of ``name`` (a tied ``lm_head.weight``)."""
    specs = checkpoint_specs(case.arch, case.recipe.format)
    return [n for n in case.recipe.names if specs[n].role == "alias" and specs[n].fill == f"copy:{name}"]


def invariance(loader: LoaderAdapter, case: Case, other: CheckpointRecipe) -> None:
    """The same tensors in another key order or file split give the same, correct state.

    Both layouts are held to the oracle, not only to each other: a loader that loads nothing
    gives the same garbage twice, and that must not pass.  The message says which layout is
    wrong, so an order- or file-dependent bug reads as one.
    """
    title = "order/sharding invariance: two layouts of the same tensors"
    first, _, tensors = _load_or_fail(loader, case, title)
    second, _, _ = _load_or_fail(loader, case, title, other)
    expected = _expected(case, tensors, loader)
    shapes = _shapes(case)
    wrong_first = state_mismatches(first, expected, shapes)
    wrong_second = state_mismatches(second, expected, shapes)
    if not wrong_first and not wrong_second:
        return
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


def checkpoint_unchanged(loader: LoaderAdapter, case: Case) -> None:
    """Loading never writes to, adds to or removes from the checkpoint directory."""
    title = "checkpoint changed: loading modified the checkpoint directory"
    with scratch_dir() as path:
        checkpoint = write_case(case, path)
        before = directory_digest(path)
        try:
            model = _call("build", loader.build, case.arch, case.placement)
            _call("load", loader.load, model, checkpoint)
        except LoaderRaised as err:
            fail(title, [str(err)], context(case))
        after = directory_digest(path)
    problems = [
        f"{name}: {'added' if name not in before else 'removed' if name not in after else 'modified'}"
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    ]
    if problems:
        fail(title, problems, context(case))


def reload(loader: LoaderAdapter, case: Case, second_seed: int) -> None:
    """A second checkpoint loaded into the same (possibly LoRA-wrapped) model replaces every
    weight: RL weight sync, and reloading after wrapping."""
    title = "reload: a second checkpoint loaded into the built model does not replace it"
    second = replace(case, recipe=replace(case.recipe, value_seed=second_seed))
    try:
        with scratch_dir() as first_path, scratch_dir() as second_path:
            first_ckpt = write_case(case, first_path)
            second_tensors = case_tensors(second)
            second_ckpt = write_case(second, second_path, tensors=second_tensors)
            model = _call("build", loader.build, case.arch, case.placement)
            _call("load", loader.load, model, first_ckpt)
            loaded = _call("load", loader.load, model, second_ckpt)
            state = _call("state", loader.state, model)
    except LoaderRaised as err:
        fail(title, [f"{err} (on the second load if both were reached)"], context(case))
    expected = _expected(second, second_tensors, loader)
    problems = state_mismatches(state, expected, _shapes(case))
    if loaded is not None:
        problems += [f"second load: {p}" for p in _tracking_problems(loaded, set(expected.tracked))]
    if problems:
        fail(title, problems, context(case, f"second value seed: {second_seed}"))


def strip_lora(name: str) -> str:
    return name.replace(".base_layer.", ".")


def lora_equivalence(loader: LoaderAdapter, case: Case) -> None:
    """A LoRA-wrapped model loads exactly the base weights the unwrapped one does."""
    if case.arch.lora is None:
        raise ValueError("lora_equivalence needs a case with arch.lora")
    title = "LoRA: the wrapped model's base weights differ from the unwrapped model's"
    plain = replace(case, arch=replace(case.arch, lora=None))
    wrapped_state, wrapped_loaded, tensors = _load_or_fail(loader, case, title)
    plain_state, _, _ = _load_or_fail(loader, plain, title)
    problems = []
    by_plain_name = {strip_lora(n): n for n in wrapped_state}
    if set(by_plain_name) != set(plain_state):
        problems.append(
            f"parameters only when wrapped: {sorted(set(by_plain_name) - set(plain_state))}; "
            f"only when unwrapped: {sorted(set(plain_state) - set(by_plain_name))}"
        )
    expected = _expected(case, tensors, loader)
    problems += state_mismatches(wrapped_state, expected, _shapes(case))
    if wrapped_loaded is not None:
        problems += _tracking_problems(wrapped_loaded, set(expected.tracked))
    if problems:
        fail(title, problems, context(case))


def _ranks(placement) -> list:
    return [
        replace(placement, pp_rank=pp, tp_rank=tp, ep_rank=ep)
        for pp in range(placement.pp_size)
        for tp in range(placement.tp_size)
        for ep in range(placement.ep_size)
    ]


def _rank_name(p) -> str:
    text = f"pp {p.pp_rank}/{p.pp_size}, tp {p.tp_rank}/{p.tp_size}"
    return text + (f", ep {p.ep_rank}/{p.ep_size}" if p.ep_size > 1 else "")


def all_ranks(loader: LoaderAdapter, case: Case) -> None:
    """Every rank of the placement (pp x tp x ep) loads without error, holds exactly its slice
    and tracks exactly its own parameters; together they cover every checkpoint weight."""
    title = "all ranks: loading the whole placement rank by rank"
    specs = checkpoint_specs(case.arch, case.recipe.format)
    tensors = case_tensors(case)
    covered = {
        n: torch.zeros(specs[n].shape, dtype=torch.bool)
        for n in case.recipe.names
        if specs[n].role == "weight"
    }
    problems = []
    with scratch_dir() as path:
        checkpoint = write_case(case, path, tensors=tensors)
        for placement in _ranks(case.placement):
            rank_case = replace(case, placement=placement)
            try:
                model = _call("build", loader.build, case.arch, placement)
                loaded = _call("load", loader.load, model, checkpoint)
                state = _call("state", loader.state, model)
            except LoaderRaised as err:
                problems.append(f"rank {_rank_name(placement)}: {err}")
                continue
            expected = _expected(rank_case, tensors, loader)
            rank_problems = state_mismatches(state, expected, _shapes(case))
            if loaded is not None:
                rank_problems += _tracking_problems(loaded, set(expected.tracked))
            problems += [f"rank {_rank_name(placement)}: {p}" for p in rank_problems]
            _mark_covered(covered, state, expected)
    for name, mask in covered.items():
        if not mask.all():
            problems.append(
                f"{name}: {int((~mask).sum())} of {mask.numel()} elements are held correctly by "
                "no rank"
            )
    if problems:
        fail(title, problems, context(case, f"ranks: {len(_ranks(case.placement))}"))


def _mark_covered(covered, state, expected: Expected) -> None:
    """Mark the checkpoint elements this rank holds correctly (views write through to masks)."""
    for name, param in expected.params.items():
        actual = state.get(name)
        if actual is None or tuple(actual.shape) != tuple(param.value.shape):
            continue
        actual = actual.detach().cpu()
        for piece in param.pieces:
            if piece.source is None or piece.source.name not in covered:
                continue
            if same_bits(actual[piece.dst], param.value[piece.dst]):
                source = replace(piece.source, scale=None, block=None)
                source_view(covered, source)[piece.src] = True
                if piece.source.scale in covered:  # dequantised at load: its scale is held too
                    _cover_scale(covered[piece.source.scale], piece.src, piece.source.block)


def _cover_scale(mask: torch.Tensor, src: tuple, block: tuple[int, int] | None) -> None:
    """Mark the scale blocks (or the per-tensor scale) a dequantised weight region used."""
    if block is None or mask.dim() == 0:
        mask.fill_(True)
        return
    rows, cols = src[-2], src[-1]
    bn, bk = block
    mask[rows.start // bn : -(-rows.stop // bn), cols.start // bk : -(-cols.stop // bk)] = True
