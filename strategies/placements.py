"""Placements: tensor-, pipeline- and expert-parallel sizes and ranks."""

from __future__ import annotations

import functools

from hypothesis import strategies as st

from weightcheck.capabilities import Capabilities
from weightcheck.arch import EXPERT_PLACEMENTS, Arch, Placement

MAX_TP = 4
MAX_PP = 4
MAX_EP = 4


@functools.lru_cache(maxsize=None)
def tp_sizes(tensor_parallel: bool = True, limit: int | None = None) -> st.SearchStrategy[int]:
    return st.integers(1, min(MAX_TP, limit or MAX_TP)) if tensor_parallel else st.just(1)


@functools.lru_cache(maxsize=None)
def pp_sizes(pipeline_parallel: bool = True, limit: int | None = None) -> st.SearchStrategy[int]:
    return st.integers(1, min(MAX_PP, limit or MAX_PP)) if pipeline_parallel else st.just(1)


def vllm_default_partition(num_layers: int, pp_size: int) -> tuple[int, ...]:
    """vLLM's get_pp_indices: the extra layers go to the ranks before the last, from the
    second-to-last backwards; the last rank never gets one."""
    parts = [num_layers // pp_size] * pp_size
    for i in range(2, num_layers % pp_size + 2):
        parts[-i] += 1
    return tuple(parts)


@st.composite
def uneven_partitions(draw, num_layers: int, pp_size: int) -> tuple[int, ...]:
    """Any split of the layers into ``pp_size`` non-empty contiguous runs."""
    cuts = sorted(draw(st.sets(st.integers(1, num_layers - 1), min_size=pp_size - 1, max_size=pp_size - 1)))
    bounds = [0, *cuts, num_layers]
    return tuple(b - a for a, b in zip(bounds, bounds[1:]))


@functools.lru_cache(maxsize=None)
def partitions(num_layers: int, pp_size: int) -> st.SearchStrategy[tuple[int, ...]]:
    if pp_size == 1:
        return st.just((num_layers,))
    return st.just(vllm_default_partition(num_layers, pp_size)) | uneven_partitions(num_layers, pp_size)


@st.composite
def placements(
    draw,
    arch: Arch,
    tp_size: int,
    pp_size: int = 1,
    caps: Capabilities | None = None,
    max_ep: int | None = None,
) -> Placement:
    """Any rank of the (tp, pp, ep) grid; ep only for MoE archs, never above the expert count."""
    caps = caps or Capabilities()
    ep_size = 1
    if arch.moe is not None and caps.supports("expert_parallel"):
        ep_size = draw(st.integers(1, min(MAX_EP, arch.moe.num_experts, max_ep or MAX_EP)))
    return Placement(
        layer_partition=draw(partitions(arch.num_layers, pp_size)),
        tp_size=tp_size,
        tp_rank=draw(st.integers(0, tp_size - 1)),
        pp_size=pp_size,
        pp_rank=draw(st.integers(0, pp_size - 1)),
        ep_size=ep_size,
        ep_rank=draw(st.integers(0, ep_size - 1)),
        expert_placement=draw(st.sampled_from(EXPERT_PLACEMENTS)),
    )
