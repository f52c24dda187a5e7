"""Placements: tensor-, pipeline- and expert-parallel sizes and ranks."""

from __future__ import annotations

import functools

from hypothesis import reject
from hypothesis import strategies as st

from weightcheck.capabilities import Capabilities
from weightcheck.arch import EXPERT_PLACEMENTS, Arch, Placement

MAX_TP = 4
MAX_PP = 4
MAX_EP = 4
# A pipeline rank that starts at layer 10: the first whose layer names all have two digits.
SPLIT_AT = 10


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
def uneven_partitions(draw, num_layers: int, pp_size: int, cut: int | None = None) -> tuple[int, ...]:
    """Any split of the layers into ``pp_size`` non-empty contiguous runs (one starting at layer
    ``cut`` when given)."""
    if cut is None:
        cuts = draw(st.sets(st.integers(1, num_layers - 1), min_size=pp_size - 1, max_size=pp_size - 1))
    else:
        others = st.sampled_from([k for k in range(1, num_layers) if k != cut])
        cuts = {cut} | draw(st.sets(others, min_size=pp_size - 2, max_size=pp_size - 2))
    cuts = sorted(cuts)
    bounds = [0, *cuts, num_layers]
    return tuple(b - a for a, b in zip(bounds, bounds[1:]))


@functools.lru_cache(maxsize=None)
def partitions(num_layers: int, pp_size: int) -> st.SearchStrategy[tuple[int, ...]]:
    """vLLM's default partition or an uneven one; with more than 10 layers also a split at
    layer 10 (vLLM's default puts layers 1 and 10 on different ranks, but never starts a rank
    at 10 for 11-12 layers)."""
    if pp_size == 1:
        return st.just((num_layers,))
    options = [st.just(vllm_default_partition(num_layers, pp_size)), uneven_partitions(num_layers, pp_size)]
    if num_layers > SPLIT_AT:
        options.append(uneven_partitions(num_layers, pp_size, cut=SPLIT_AT))
    return st.one_of(options)


@st.composite
def placements(
    draw,
    arch: Arch,
    tp_size: int,
    pp_size: int = 1,
    caps: Capabilities | None = None,
    max_ep: int | None = None,
) -> Placement:
    """Any rank of the (tp, pp, ep) grid; ep only for MoE archs, never above the expert count.

    For a loader that declares which placements it can hold (``Capabilities.placements``),
    only those: the ep size among those with a supported rank, then one of its supported ranks
    (both shrink towards the first, smallest one).
    """
    caps = caps or Capabilities()
    max_ep = min(MAX_EP, arch.moe.num_experts, max_ep or MAX_EP) if arch.moe is not None else 1
    if not caps.supports("expert_parallel"):
        max_ep = 1
    if caps.placements is not None:
        held = draw(_supported_placements(arch, tp_size, pp_size, caps, max_ep))
        if held is None:
            reject()  # the loader holds no rank of this (tp, pp): cases() falls back instead
        return held
    ep_size = draw(st.integers(1, max_ep))
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


def holds_any(arch: Arch, tp_size: int, pp_size: int, caps) -> bool:
    """Whether the loader holds some rank of ``arch`` at (tp, pp), ep 1 (any partition it
    would be drawn with: the default one is tried)."""
    if caps.placements is None:
        return True
    partition = vllm_default_partition(arch.num_layers, pp_size)
    return any(
        caps.placement_reason(Placement(partition, tp_size, tp, pp_size, pp), arch) is None
        for pp in range(pp_size)
        for tp in range(tp_size)
    )


@st.composite
def _supported_placements(draw, arch: Arch, tp_size: int, pp_size: int, caps, max_ep: int) -> Placement | None:
    partition = draw(partitions(arch.num_layers, pp_size))
    kind = draw(st.sampled_from(EXPERT_PLACEMENTS))
    by_ep_size = {}
    for ep_size in range(1, max_ep + 1):
        grid = [
            Placement(partition, tp_size, tp, pp_size, pp, ep_size, ep, kind)
            for pp in range(pp_size)
            for tp in range(tp_size)
            for ep in range(ep_size)
        ]
        supported = [p for p in grid if caps.placement_reason(p, arch) is None]
        if supported:
            by_ep_size[ep_size] = supported
    if not by_ep_size:
        return None
    ep_size = draw(st.sampled_from(sorted(by_ep_size)), label="ep size")
    return draw(st.sampled_from(by_ep_size[ep_size]), label="supported rank")
