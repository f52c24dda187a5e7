"""Whole cases for one family, within what a loader declares it supports."""

from __future__ import annotations

from hypothesis import strategies as st

from conformance.protocol import Capabilities
from fixtures.case import Case

from .archs import ARCH_STRATEGIES
from .checkpoints import checkpoint_recipes
from .placements import placements, tp_sizes


@st.composite
def cases(draw, family: str, capabilities: Capabilities | None = None) -> Case:
    caps = capabilities or Capabilities()
    tp_size = draw(tp_sizes(caps.supports("tensor_parallel")))
    arch = draw(
        ARCH_STRATEGIES[family](
            tp_size=tp_size,
            tied=caps.supports("tied_embeddings"),
            bias=caps.supports("attention_bias"),
        )
    )
    placement = draw(placements(arch, tp_size))
    recipe = draw(checkpoint_recipes(arch, sharded=caps.supports("sharded_checkpoint")))
    return Case(arch, placement, recipe)
