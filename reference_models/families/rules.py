"""Layout rules: how one runtime parameter is assembled from checkpoint tensors.

Each rule turns (arch, placement, checkpoint shapes) into the runtime shape and a list of
``Piece``s: which region of the runtime tensor holds which slice of which checkpoint tensor.
The pieces are the oracle's answer and also its explanation: a failed comparison names the
piece, so the message can say "rows 32:48 of ... (shard k, tp rank 1/2) should be ...[16:32]".

This module is the oracle's own statement of vLLM's conventions (docs/runtime-layout.md).  The
reference loader implements the same conventions separately and must never import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

VOCAB_PADDING = 64


@dataclass(frozen=True)
class Source:
    """A checkpoint tensor, optionally one entry of its first dim, transposed, narrowed to rows.

    Applied in that order: ``select`` picks expert ``e`` of a fused 3-D expert tensor,
    ``transpose`` swaps the two remaining dims, ``rows`` index the result.  A GPT-2 ``c_attn``
    k block is ``Source(name, transpose=True, rows=(H, 2H))``; expert 3's up rows of a fused
    ``gate_up_proj`` are ``Source(name, select=3, rows=(Im, 2 * Im))``.

    ``scale`` names the block scale (``weight_scale_inv``, blocks ``block``) of an FP8 tensor
    that is dequantised at load time (``oracle.expected.dequantize`` is the definition); it
    is then a source of the parameter too.
    """

    name: str
    transpose: bool = False
    rows: tuple[int, int] | None = None
    select: int | None = None
    scale: str | None = None
    block: tuple[int, int] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,) if self.scale is None else (self.name, self.scale)

    def view_shape(self, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
        shape = tuple(shapes[self.name])
        if self.select is not None:
            shape = shape[1:]
        if self.transpose:
            shape = shape[::-1]
        if self.rows is not None:
            shape = (self.rows[1] - self.rows[0],) + shape[1:]
        return shape


@dataclass(frozen=True)
class Piece:
    """Runtime region ``dst`` holds ``source`` view's region ``src`` (or zeros if no source)."""

    dst: tuple[slice, ...]
    source: Source | None
    src: tuple[slice, ...]
    label: str


def _rank_label(label: str, placement) -> str:
    tp = f"tp rank {placement.tp_rank}/{placement.tp_size}"
    return f"{label}, {tp}" if label else tp


def _block(n: int, placement) -> tuple[int, int]:
    if n % placement.tp_size:
        raise ValueError(f"invalid case: {n} rows do not split over tp_size {placement.tp_size}")
    size = n // placement.tp_size
    return placement.tp_rank * size, (placement.tp_rank + 1) * size


@dataclass(frozen=True)
class Replicated:
    """Every rank holds the whole tensor (norms, row-parallel biases, position embeddings)."""

    source: Source

    def pieces(self, arch, placement, shapes):
        shape = self.source.view_shape(shapes)
        full = tuple(slice(0, n) for n in shape)
        return shape, [Piece(full, self.source, full, "replicated")]


@dataclass(frozen=True)
class Sharded:
    """Split along ``dim`` into ``tp_size`` equal contiguous blocks: column- (0) or row- (1)."""

    source: Source
    dim: int

    def pieces(self, arch, placement, shapes):
        shape = list(self.source.view_shape(shapes))
        start, stop = _block(shape[self.dim], placement)
        shape[self.dim] = stop - start
        dst = tuple(slice(0, n) for n in shape)
        src = list(dst)
        src[self.dim] = slice(start, stop)
        kind = "column-parallel" if self.dim == 0 else "row-parallel"
        return tuple(shape), [Piece(dst, self.source, tuple(src), _rank_label(kind, placement))]


@dataclass(frozen=True)
class VocabParallel:
    """Vocabulary padded, then split in contiguous blocks; padding rows are zero.

    The padded size is the smallest multiple of lcm(64, tp_size) holding the vocabulary: vLLM's
    multiple of 64 whenever tp_size divides 64 (vLLM refuses the other sizes).
    """

    source: Source

    def pieces(self, arch, placement, shapes):
        vocab, *rest = self.source.view_shape(shapes)
        unit = math.lcm(VOCAB_PADDING, placement.tp_size)
        padded = -(-vocab // unit) * unit
        start, stop = _block(padded, placement)
        cols = tuple(slice(0, n) for n in rest)
        pieces = []
        real_stop = min(stop, vocab)
        if real_stop > start:
            pieces.append(
                Piece(
                    (slice(0, real_stop - start),) + cols,
                    self.source,
                    (slice(start, real_stop),) + cols,
                    _rank_label("vocab rows", placement),
                )
            )
        pad_start = max(start, vocab)
        if stop > pad_start:
            pieces.append(
                Piece(
                    (slice(pad_start - start, stop - start),) + cols,
                    None,
                    (),
                    _rank_label(f"vocab padding rows {pad_start}:{stop} of {padded}", placement),
                )
            )
        return (stop - start, *rest), pieces


@dataclass(frozen=True)
class Stacked:
    """Several checkpoint tensors, each sharded on rows, stacked as [part0_r | part1_r | ...].

    ``parts`` pairs a shard label with its source.  ``rows_for(label, n)`` picks the rows of
    one part this rank holds; the default is an even split (``gate_up_proj``).
    """

    parts: Sequence[tuple[str, Source]]

    def rows_for(self, arch, placement, label: str, n: int) -> tuple[int, int]:
        return _block(n, placement)

    def pieces(self, arch, placement, shapes):
        pieces = []
        offset = 0
        rest: tuple[int, ...] = ()
        for label, source in self.parts:
            n, *rest = source.view_shape(shapes)
            start, stop = self.rows_for(arch, placement, label, n)
            cols = tuple(slice(0, m) for m in rest)
            pieces.append(
                Piece(
                    (slice(offset, offset + stop - start),) + cols,
                    source,
                    (slice(start, stop),) + cols,
                    _rank_label(f"shard {label}", placement),
                )
            )
            offset += stop - start
        return (offset, *rest), pieces


@dataclass(frozen=True)
class QKV(Stacked):
    """[q_r | k_r | v_r]: query heads split evenly; kv heads split, or replicated when tp > nKV."""

    def rows_for(self, arch, placement, label, n):
        hd, tp, rank = arch.head_dim, placement.tp_size, placement.tp_rank
        if label == "q":
            return _block(n, placement)
        n_kv = n // hd
        if tp > n_kv:
            head = rank // (tp // n_kv)
            return head * hd, (head + 1) * hd
        return _block(n, placement)


@dataclass(frozen=True)
class Concatenated(Stacked):
    """Parts stacked on rows and never sharded: a replicated merged layer (``fused_qkv_a_proj``)."""

    def rows_for(self, arch, placement, label, n):
        return 0, n


def qkv_fused(name: str, q: int, kv: int, transpose: bool) -> QKV:
    """A fused on-disk [q|k|v] tensor, split by the total head counts first."""
    return QKV(
        (
            ("q", Source(name, transpose, (0, q))),
            ("k", Source(name, transpose, (q, q + kv))),
            ("v", Source(name, transpose, (q + kv, q + 2 * kv))),
        )
    )


def local_experts(num_experts: int, placement) -> list[int]:
    """Global ids of the experts this expert-parallel rank holds, in local order."""
    k, n = placement.ep_rank, placement.ep_size
    if n == 1:
        return list(range(num_experts))
    if placement.expert_placement == "round_robin":
        return list(range(k, num_experts, n))
    base, extra = divmod(num_experts, n)
    start = k * base + min(k, extra)
    return list(range(start, start + base + (1 if k < extra else 0)))


@dataclass(frozen=True)
class Experts:
    """Routed experts stacked on dim 0 of a runtime tensor, local experts only.

    ``sources[g]`` are the parts of global expert ``g`` with their shard labels.  ``dim`` 0:
    parts are sharded on rows and stacked (``w13``: [gate_r | up_r]); ``dim`` 1: one part
    sharded on columns (``w2``).  Under expert parallel each expert is held whole.
    """

    sources: tuple[tuple[tuple[str, Source], ...], ...]
    dim: int

    def pieces(self, arch, placement, shapes):
        ep = placement.ep_size > 1
        tm, r = (1, 0) if ep else (placement.tp_size, placement.tp_rank)
        where = (
            f"ep rank {placement.ep_rank}/{placement.ep_size} ({placement.expert_placement})"
            if ep
            else f"tp rank {r}/{tm}"
        )
        pieces = []
        inner: tuple[int, ...] = ()
        local = local_experts(len(self.sources), placement)
        for j, g in enumerate(local):
            offset = 0
            for label, source in self.sources[g]:
                shape = source.view_shape(shapes)
                if shape[self.dim] % tm:
                    raise ValueError(f"invalid case: {shape[self.dim]} does not split over {tm}")
                size = shape[self.dim] // tm
                block = slice(r * size, (r + 1) * size)
                if self.dim == 0:
                    dst = (j, slice(offset, offset + size), slice(0, shape[1]))
                    src = (block, slice(0, shape[1]))
                    offset += size
                    inner = (offset, shape[1])
                else:
                    dst = (j, slice(0, shape[0]), slice(0, size))
                    src = (slice(0, shape[0]), block)
                    inner = (shape[0], size)
                text = f"expert {g} as local {j}, shard {label}, {where}"
                pieces.append(Piece(dst, source, src, text))
        return (len(local), *inner), pieces


@dataclass(frozen=True)
class InDtype:
    """``rule`` with runtime dtype ``dtype`` instead of the model dtype (FP8 weights, scales)."""

    rule: object
    dtype: str

    def pieces(self, arch, placement, shapes):
        return self.rule.pieces(arch, placement, shapes)


def _plain(source: Source) -> Source:
    if source.transpose or source.rows is not None or source.select is not None:
        raise ValueError(f"FP8 scales of a transposed, narrowed or fused 3-D source: {source}")
    return source


def _groups(pieces) -> dict[int | None, list[Piece]]:
    """The weight's pieces per local expert (dst[0] an int), or all in one group (None)."""
    groups: dict[int | None, list[Piece]] = {}
    for piece in pieces:
        key = piece.dst[0] if piece.dst and isinstance(piece.dst[0], int) else None
        groups.setdefault(key, []).append(piece)
    return groups


def scale_name(weight_name: str, suffix: str) -> str:
    """``x.weight`` -> ``x.weight_scale_inv``; a scale tensor sits beside its weight."""
    return weight_name.removesuffix(".weight") + "." + suffix


@dataclass(frozen=True)
class ShardScales:
    """Per-tensor FP8 scales of ``weight``'s pieces: scalars, never sharded.

    One slot per piece (``[q, k, v]``, ``[gate, up]``; ``[E_local, 2]`` for experts), or with
    ``one_slot`` one per group (``[E_local]``: ``w2_weight_scale``, the experts' input scales,
    where gate's and up's must be equal and both are sources of the slot).
    """

    weight: object
    suffix: str  # "weight_scale" or "input_scale"
    one_slot: bool = False

    def pieces(self, arch, placement, shapes):
        _, weight_pieces = self.weight.pieces(arch, placement, shapes)
        groups = _groups(p for p in weight_pieces if p.source is not None)
        out = []
        width = 1
        for key, members in groups.items():
            width = 1 if self.one_slot else len(members)
            for i, piece in enumerate(members):
                slot = () if self.one_slot else (slice(i, i + 1),)
                dst = ((key,) if key is not None else (slice(0, 1),) if self.one_slot else ()) + slot
                source = Source(scale_name(_plain(piece.source).name, self.suffix))
                label = f"{self.suffix} of {piece.label}"
                out.append(Piece(dst, source, (), label))
        if None in groups:
            return (width,), out
        shape = (len(groups),) if self.one_slot else (len(groups), width)
        return shape, out


def _cover(s: slice, block: int) -> slice:
    return slice(s.start // block, -(-s.stop // block))


@dataclass(frozen=True)
class BlockScales:
    """Block FP8 ``weight_scale_inv`` of ``weight`` by the block-cover rule.

    Each weight piece (rows a:b, columns c:d of its checkpoint weight) brings the scale blocks
    covering it, rows a//bn : ceil(b/bn), columns c//bk : ceil(d/bk), stacked on rows in the
    weight's piece order (per expert for experts).
    """

    weight: object
    block: tuple[int, int]

    def pieces(self, arch, placement, shapes):
        bn, bk = self.block
        _, weight_pieces = self.weight.pieces(arch, placement, shapes)
        groups = _groups(p for p in weight_pieces if p.source is not None)
        out = []
        rows = cols = 0
        for key, members in groups.items():
            offset = 0
            for piece in members:
                src_rows, src_cols = piece.src[-2], piece.src[-1]
                r, c = _cover(src_rows, bn), _cover(src_cols, bk)
                n, cols = r.stop - r.start, c.stop - c.start
                dst = ((key,) if key is not None else ()) + (
                    slice(offset, offset + n),
                    slice(0, cols),
                )
                source = Source(scale_name(_plain(piece.source).name, "weight_scale_inv"))
                label = (
                    f"scale blocks of {piece.label} (weight rows {src_rows.start}:"
                    f"{src_rows.stop}, columns {src_cols.start}:{src_cols.stop}; block {bn}x{bk})"
                )
                out.append(Piece(dst, source, (r, c), label))
                offset += n
            rows = offset
        shape = (rows, cols) if None in groups else (len(groups), rows, cols)
        return shape, out
