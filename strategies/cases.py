"""Whole cases for one family, within what a loader declares it supports."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import strategies as st

from weightcheck.capabilities import Capabilities
from weightcheck.fixtures.case import Case

from .archs import archs, quants
from .checkpoints import checkpoint_recipes
from .placements import holds_any, placements, pp_sizes, tp_sizes


@st.composite
def cases(
    draw, family: str, capabilities: Capabilities | None = None, max_ranks: int | None = None
) -> Case:
    """Parallel sizes first, then an arch they can split, a rank, and a checkpoint.

    ``max_ranks`` bounds tp x pp x ep, for properties that load every rank of the placement.
    Where the loader holds no rank of the arch at the drawn (tp, pp) (SGLang's GPT-2 has no
    pipeline parallel), the sizes fall back to (tp, 1), then (1, 1), which every arch drawn for
    them can split: no example is filtered out, so a loader that declares many such holes still
    runs its examples (filtering them made Hypothesis fail its filter health check).
    """
    caps = capabilities or Capabilities()
    tp_size = draw(tp_sizes(caps.supports("tensor_parallel"), limit=max_ranks))
    pp_size = draw(pp_sizes(caps.supports("pipeline_parallel"), limit=max_ranks and max_ranks // tp_size))
    arch = draw(archs(family, tp_size, pp_size, caps))
    tp_size, pp_size = next(
        (sizes for sizes in ((tp_size, pp_size), (tp_size, 1)) if holds_any(arch, *sizes, caps)), (1, 1)
    )
    max_ep = max_ranks // (tp_size * pp_size) if max_ranks else None
    placement = draw(placements(arch, tp_size, pp_size, caps, max_ep=max_ep))
    recipe = draw(
        checkpoint_recipes(
            arch,
            sharded=caps.supports("sharded_checkpoint"),
            fused_experts=caps.supports("fused_expert_checkpoint"),
        )
    )
    return Case(arch, placement, recipe)


@st.composite
def fp8_cases(draw, family: str, capabilities: Capabilities, methods: tuple[str, ...]) -> Case:
    """A case whose arch is FP8-quantised with one of ``methods`` (for the device checks)."""
    caps = capabilities
    case = draw(cases(family, caps))
    if case.arch.quant is not None and case.arch.quant.method in methods:
        return case
    arch = replace(case.arch, quant=draw(quants(case.arch, methods), label="fp8 config"))
    recipe = draw(
        checkpoint_recipes(arch, sharded=caps.supports("sharded_checkpoint"), fused_experts=False)
    )
    return Case(arch, case.placement, recipe)
