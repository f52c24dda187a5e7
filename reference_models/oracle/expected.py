"""The oracle: pure functions from (arch, placement, checkpoint tensors) to what a rank holds.

No torch modules, no loading order, no weight_loader callbacks: each runtime parameter is
assembled directly from its layout rule's pieces.  ``Expected`` also answers the tracking
questions: which parameters are loaded, which checkpoint tensors this rank needs, and which
parameters depend on a given checkpoint tensor.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Mapping

import torch

from weightcheck.arch import TENSOR_DTYPES

from .. import families
from ..families.rules import InDtype, Piece, Source, scale_name


@dataclass(frozen=True)
class ExpectedParam:
    name: str
    value: torch.Tensor
    pieces: tuple[Piece, ...]
    # the model's code keeps it in float32 (FamilySpec.kept_in_float32): float32 holding the
    # exact cast of ``value`` is right too
    float32_allowed: bool = False

    def held_as(self, dtype: torch.dtype) -> torch.Tensor:
        """What a parameter held in ``dtype`` must equal: the float32 cast where the model keeps
        it in float32 (exact), else ``value`` (another dtype is then a mismatch)."""
        if dtype == torch.float32 and self.float32_allowed:
            return self.value.to(torch.float32)
        return self.value

    @property
    def sources(self) -> frozenset[str]:
        return frozenset(n for p in self.pieces if p.source is not None for n in p.source.names)


@dataclass(frozen=True)
class Expected:
    params: Mapping[str, ExpectedParam]

    @property
    def tracked(self) -> frozenset[str]:
        """Every runtime parameter of the rank is initialised from the checkpoint."""
        return frozenset(self.params)

    @property
    def needed(self) -> frozenset[str]:
        """Checkpoint tensors this rank reads."""
        return frozenset().union(*(p.sources for p in self.params.values()))

    def dependents(self, checkpoint_name: str) -> frozenset[str]:
        return frozenset(n for n, p in self.params.items() if checkpoint_name in p.sources)


def dequantize(
    weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None
) -> torch.Tensor:
    """The FP8 dequantisation the suite holds loaders to, exactly (float32 result).

    ``scale`` (``weight_scale_inv``) multiplies, expanded over ``block`` and cropped to the
    weight: blocks at the bottom and right edges may be partial.  ``block`` None: a
    per-tensor ``weight_scale``.
    """
    if block is None:
        return weight.float() * scale.float()
    n, k = weight.shape
    bn, bk = block
    expanded = scale.float().repeat_interleave(bn, 0).repeat_interleave(bk, 1)[:n, :k]
    return weight.float() * expanded


def source_view(tensors: Mapping[str, torch.Tensor], source: Source) -> torch.Tensor:
    t = tensors[source.name]
    if source.scale is not None:
        t = dequantize(t, tensors[source.scale], source.block)
    if source.select is not None:
        t = t[source.select]
    if source.transpose:
        t = t.t()
    if source.rows is not None:
        t = t[source.rows[0] : source.rows[1]]
    return t


@functools.lru_cache(maxsize=512)
def expected_layout(arch, placement, fmt: str = "default") -> Mapping:
    """Runtime name -> layout rule for this rank (cached: arch and placement are frozen)."""
    return MappingProxyType(families.family_spec(arch.family).layout(arch, placement, fmt))


@functools.lru_cache(maxsize=512)
def checkpoint_shapes(arch, fmt: str = "default") -> Mapping[str, tuple[int, ...]]:
    specs = families.checkpoint_specs(arch, fmt)
    return MappingProxyType({n: s.shape for n, s in specs.items()})


def needed_sources(arch, placement, fmt: str = "default") -> frozenset[str]:
    """Checkpoint tensors this rank's parameters are built from (no values needed)."""
    shapes = checkpoint_shapes(arch, fmt)
    names: set[str] = set()
    for rule in expected_layout(arch, placement, fmt).values():
        _, pieces = rule.pieces(arch, placement, shapes)
        names.update(n for p in pieces if p.source is not None for n in p.source.names)
    return frozenset(names)


def expected_state(
    arch,
    placement,
    tensors: Mapping[str, torch.Tensor],
    fmt: str = "default",
    dequantized: bool = False,
) -> Expected:
    """What ``state(model)`` must equal on this rank after loading ``tensors``.

    ``fmt`` is the checkpoint format (see ``FamilySpec.formats``), e.g. per-expert or fused
    3-D expert tensors: the runtime state is the same, its sources differ.  ``dequantized``:
    the state of a loader that dequantises FP8 at load: each FP8 weight in the model dtype by
    the dequantisation definition, and no scale parameters.
    """
    shapes = checkpoint_shapes(arch, fmt)
    kept = families.family_spec(arch.family).kept_in_float32(arch)
    params = {}
    for name, rule in expected_layout(arch, placement, fmt).items():
        if dequantized and isinstance(rule, InDtype):
            if rule.dtype != "float8_e4m3fn":
                continue  # a scale: folded into its weight
            params[name] = _dequantized_param(arch, placement, tensors, fmt, name, rule)
            continue
        shape, pieces = rule.pieces(arch, placement, shapes)
        dtype = TENSOR_DTYPES[rule.dtype] if isinstance(rule, InDtype) else arch.torch_dtype
        value = torch.zeros(shape, dtype=dtype)
        for piece in pieces:
            if piece.source is not None:
                value[piece.dst] = source_view(tensors, piece.source)[piece.src].to(value.dtype)
        params[name] = ExpectedParam(name, value, tuple(pieces), float32_allowed=name in kept)
    return Expected(params)


def dequantized_weights(
    arch, placement, tensors: Mapping[str, torch.Tensor], fmt: str = "default"
) -> dict[str, torch.Tensor]:
    """Each FP8 runtime weight of the rank, dequantised (float32) before slicing.

    The reference for checks of what a loader computes with its FP8 weights: the same pieces
    as the weight's rule, each read from the dequantised checkpoint tensor (so a TP split
    through a block uses that block's scale).
    """
    return {
        name: _dequantized_param(arch, placement, tensors, fmt, name, rule, torch.float32).value
        for name, rule in expected_layout(arch, placement, fmt).items()
        if isinstance(rule, InDtype) and rule.dtype == "float8_e4m3fn"
    }


def _dequantized_param(arch, placement, tensors, fmt, name, rule, dtype=None) -> ExpectedParam:
    """An FP8 weight's pieces, each read from its dequantised checkpoint tensor (scale included
    as a source), in ``dtype`` (default: the model dtype, one cast from the float32 product)."""
    block = arch.quant.block
    suffix = "weight_scale_inv" if block else "weight_scale"
    shape, pieces = rule.pieces(arch, placement, checkpoint_shapes(arch, fmt))
    value = torch.zeros(shape, dtype=dtype or arch.torch_dtype)
    out = []
    for piece in pieces:
        scale = scale_name(piece.source.name, suffix)
        piece = replace(piece, source=replace(piece.source, scale=scale, block=block))
        value[piece.dst] = source_view(tensors, piece.source)[piece.src].to(value.dtype)
        out.append(piece)
    return ExpectedParam(name, value, tuple(out))
