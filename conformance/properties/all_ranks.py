"""All ranks of a placement (pp x tp x ep, at most ``MAX_RANKS``): each loads without error,
holds exactly its slice and tracks exactly its own parameters, and together they hold every
checkpoint weight."""

from __future__ import annotations

from dataclasses import replace

import torch

from weightcheck.reference_models.families import checkpoint_specs
from weightcheck.reference_models.oracle import Expected, source_view

from ..assertions import fail, same_bits
from ..protocol import load_report
from ..timing import section
from .base import (
    LoaderRaised,
    Outcome,
    Property,
    call,
    context,
    expected,
    mismatches,
    scratch,
    tensors_of,
    tracking_problems,
    write,
)

MAX_RANKS = 8  # one example loads every rank: keep it to a few dozen loads


def ranks(placement, caps=None, arch=None) -> list:
    """Every rank of the placement's world that the loader can hold (for ``arch``), in
    (pp, tp, ep) order."""
    every = [
        replace(placement, pp_rank=pp, tp_rank=tp, ep_rank=ep)
        for pp in range(placement.pp_size)
        for tp in range(placement.tp_size)
        for ep in range(placement.ep_size)
    ]
    if caps is None:
        return every
    return [p for p in every if caps.placement_reason(p, arch) is None]


def rank_name(p) -> str:
    text = f"pp {p.pp_rank}/{p.pp_size}, tp {p.tp_rank}/{p.tp_size}"
    return text + (f", ep {p.ep_rank}/{p.ep_size}" if p.ep_size > 1 else "")


class AllRanks(Property):
    name = "all_ranks"
    label = "all ranks"
    max_ranks = MAX_RANKS

    def run(self, loader, case, extras):
        title = "all ranks: loading the whole placement rank by rank"
        specs = checkpoint_specs(case.arch, case.recipe.format)
        tensors = tensors_of(case)
        covered = {
            n: torch.zeros(specs[n].shape, dtype=torch.bool)
            for n in case.recipe.names
            if specs[n].role == "weight"
        }
        problems = []
        placements = ranks(case.placement, loader.capabilities, case.arch)
        with scratch() as path:
            checkpoint = write(case, path, tensors=tensors)
            for placement, got in zip(placements, load_world(loader, case.arch, placements, checkpoint)):
                if isinstance(got, LoaderRaised):
                    problems.append(f"rank {rank_name(placement)}: {got}")
                    continue
                state, loaded = got
                rank_case = replace(case, placement=placement)
                exp = expected(rank_case, tensors, loader)
                rank_problems = mismatches(state, exp, case, tensors=tensors)
                if loaded is not None:
                    rank_problems += tracking_problems(loaded, set(exp.tracked))
                problems += [f"rank {rank_name(placement)}: {p}" for p in rank_problems]
                with section("compare"):
                    mark_covered(covered, state, exp)
        for name, mask in covered.items():
            if not mask.all():
                problems.append(
                    f"{name}: {int((~mask).sum())} of {mask.numel()} elements are held correctly "
                    "by no rank"
                )
        if problems:
            fail(title, problems, context(case, f"ranks: {len(placements)}"))
        return Outcome()


def load_world(loader, arch, placements, checkpoint) -> list:
    """Each rank's ``(state, loaded)`` or ``LoaderRaised``: through the loader's ``load_ranks``
    hook (one world run) when it has one, else build, load and state rank by rank."""
    hook = loader.hook("load_ranks")
    if hook is not None:
        try:
            results = call("load_ranks", hook, arch, list(placements), checkpoint)
        except LoaderRaised as err:
            return [err] * len(placements)
        if len(results) != len(placements):
            err = LoaderRaised(
                "load_ranks",
                ValueError(f"returned {len(results)} results for {len(placements)} placements"),
            )
            return [err] * len(placements)
        return [
            LoaderRaised("load_ranks", r)
            if isinstance(r, BaseException)
            else (dict(r[0]), load_report(r[1], "load_ranks()").loaded)
            for r in results
        ]
    out = []
    for placement in placements:
        try:
            model = call("build", loader.build, arch, placement)
            report = call("load", loader.load, model, checkpoint)
            out.append((call("state", loader.state, model), report.loaded))
        except LoaderRaised as err:
            out.append(err)
    return out


def mark_covered(covered, state, exp: Expected) -> None:
    """Mark the checkpoint elements this rank holds correctly (views write through to masks)."""
    for name, param in exp.params.items():
        actual = state.get(name)
        if actual is None or tuple(actual.shape) != tuple(param.value.shape):
            continue
        actual = actual.detach().cpu()
        want = param.held_as(actual.dtype)
        for piece in param.pieces:
            if piece.source is None or piece.source.name not in covered:
                continue
            if same_bits(actual[piece.dst], want[piece.dst]):
                source = replace(piece.source, scale=None, block=None)
                source_view(covered, source)[piece.src] = True
                if piece.source.scale in covered:  # dequantised at load: its scale is held too
                    cover_scale(covered[piece.source.scale], piece.src, piece.source.block)


def cover_scale(mask: torch.Tensor, src: tuple, block: tuple[int, int] | None) -> None:
    """Mark the scale blocks (or the per-tensor scale) a dequantised weight region used."""
    if block is None or mask.dim() == 0:
        mask.fill_(True)
        return
    rows, cols = src[-2], src[-1]
    bn, bk = block
    mask[rows.start // bn : -(-rows.stop // bn), cols.start // bk : -(-cols.stop // bk)] = True
