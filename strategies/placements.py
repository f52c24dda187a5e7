"""Placements: tensor-parallel size and rank (pipeline and expert parallel come later)."""

from __future__ import annotations

from hypothesis import strategies as st

from reference_models.arch import Arch, Placement

MAX_TP = 4


def tp_sizes(tensor_parallel: bool = True) -> st.SearchStrategy[int]:
    return st.integers(1, MAX_TP) if tensor_parallel else st.just(1)


@st.composite
def placements(draw, arch: Arch, tp_size: int) -> Placement:
    """Any rank of ``tp_size``; the whole model on one pipeline rank."""
    return Placement(
        layer_partition=(arch.num_layers,),
        tp_size=tp_size,
        tp_rank=draw(st.integers(0, tp_size - 1)),
    )
