"""Tensor-parallel layers in vLLM's style, reduced to what loading needs: parameters and loaders.

Each parameter carries a ``weight_loader(param, loaded_weight, loaded_shard_id=None)`` callback,
as in vLLM, so a model's ``load_weights`` only routes checkpoint tensors; all the slicing of the
TP layout (docs/runtime-layout.md) lives here, next to the shapes it produces.  Parameters start
as NaN (``parameters.new_parameter``), and loaders raise ``ValueError`` on a checkpoint tensor of
the wrong shape.

Quantisation (docs/runtime-layout.md, "FP8 quantisation"): a linear layer holds its geometry and
its weight's own ``weight_loader``; everything that depends on the checkpoint's format (the
weight's dtype, the scale parameters and their loaders, dequantisation, post-processing) is its
``quant_method``'s (``quant.py``), picked from the layer's ``Quant`` as vLLM's layers ask their
quant config.  Every linear layer describes the checkpoint pieces it holds (``row_pieces``: which
rows of which checkpoint shard land where; ``col_piece``: which columns), and the methods are
written once on top of that.
"""

from __future__ import annotations

from typing import Hashable, NamedTuple, Sequence

import torch
from torch import nn

from weightcheck.arch import Placement, Quant
from weightcheck.reference_models.reference_loader.parameters import (
    check_shape,
    divide,
    new_parameter,
)
from weightcheck.reference_models.reference_loader.quant import (
    LinearMethod,
    UnquantizedLinearMethod,
    get_quant_method,
)

# Re-exported: the FP8 mutants (reference_models/mutants/) import these from here, where
# they were defined before quant.py / parameters.py took them.
from weightcheck.reference_models.reference_loader.parameters import ceil_div as ceil_div
from weightcheck.reference_models.reference_loader.quant import block_cover as block_cover

VOCAB_PADDING = 64


def pad_vocab(vocab_size: int, tp_size: int = 1) -> int:
    """Round up to a multiple of 64 that ``tp_size`` also divides (vLLM's rule when tp | 64)."""
    step = VOCAB_PADDING
    while step % tp_size:
        step += VOCAB_PADDING
    return -(-vocab_size // step) * step


@torch.no_grad()
def default_weight_loader(
    param: nn.Parameter, loaded_weight: torch.Tensor, loaded_shard_id=None
) -> None:
    """Copy a replicated tensor whole; ``copy_`` casts to the parameter's dtype, as vLLM does."""
    if loaded_shard_id is not None:
        raise ValueError(f"a replicated parameter has no shard {loaded_shard_id!r}")
    check_shape(loaded_weight, param.shape, "replicated parameter")
    param.data.copy_(loaded_weight)


class RowPiece(NamedTuple):
    """Rows ``[start, start+size)`` of checkpoint shard ``shard`` (``full`` rows in all) sit at
    rows ``[offset, offset+size)`` of this rank's weight."""

    shard: Hashable
    full: int
    start: int
    size: int
    offset: int


class ColPiece(NamedTuple):
    """Columns ``[start, start+size)`` of the checkpoint weight's ``full`` columns."""

    full: int
    start: int
    size: int


class _TPLayer(nn.Module):
    """Remembers this rank's TP coordinates, taken from the ``Placement`` it was built for.

    ``disable_tp`` builds the layer as if ``tp_size`` were 1 (vLLM's ``disable_tp``): every rank
    holds it whole.
    """

    def __init__(self, placement: Placement, dtype: torch.dtype, disable_tp: bool = False) -> None:
        super().__init__()
        self.tp_rank = 0 if disable_tp else placement.tp_rank
        self.tp_size = 1 if disable_tp else placement.tp_size
        self.dtype = dtype
        self.device = placement.device

    def _param(self, shape, loader=None, shard_ids=None) -> nn.Parameter:
        return new_parameter(shape, self.dtype, self.device, loader or self.weight_loader, shard_ids)

    def weight_loader(self, param, loaded_weight, loaded_shard_id=None) -> None:
        raise NotImplementedError


class LinearBase(_TPLayer):
    """What every linear layer shares: its geometry, and a quant method that holds the rest.

    Subclasses set their sizes, then call ``create_weights``; they describe their checkpoint
    pieces with ``row_pieces()`` / ``col_piece()`` and load the weight with ``weight_loader``.
    ``quant`` is None for a layer whose checkpoint modules are not quantised (ignored ones too).
    """

    quant_method: LinearMethod = UnquantizedLinearMethod()
    shard_order: tuple[Hashable, ...] = (None,)

    @property
    def quant(self) -> Quant | None:
        return self.quant_method.quant

    def row_pieces(self) -> list[RowPiece]:
        raise NotImplementedError

    def col_piece(self) -> ColPiece:
        raise NotImplementedError

    def _piece(self, shard_id) -> RowPiece:
        for piece in self.row_pieces():
            if piece.shard == shard_id:
                return piece
        raise ValueError(f"{type(self).__name__} has no shard {shard_id!r}")

    def create_weights(
        self, rows: int, cols: int, shard_ids, bias: bool, quant: Quant | None,
        weight_loader=None, bias_rows: int | None = None, bias_loader=None, bias_shard_ids=None,
    ) -> None:
        """The weight and its scales (the quant method's), then the bias (never quantised)."""
        self.quant_method = get_quant_method(quant)
        self.shard_order = tuple(shard_ids) if shard_ids else (None,)
        self.quant_method.create_weights(
            self, rows, cols, shard_ids, weight_loader or self.weight_loader
        )
        if bias:
            self.bias = new_parameter(
                (rows if bias_rows is None else bias_rows,), self.dtype, self.device,
                bias_loader or self.weight_loader,
                shard_ids if bias_shard_ids is None else bias_shard_ids,
            )
        else:
            self.bias = None

    # -- inference-side views (the quant method's) --------------------------------------------

    @torch.no_grad()
    def dequantized_weight(self) -> torch.Tensor:
        """This rank's weight in the model dtype (FP8 dequantised as the doc defines it)."""
        return self.quant_method.dequantized_weight(self)

    @torch.no_grad()
    def forward_float(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T (+ bias)`` in float32 from the dequantised weight; ``x`` is ``[B, K_local]``."""
        return self.quant_method.apply(self, x, getattr(self, "bias", None))

    @torch.no_grad()
    def process_weights_after_loading(self) -> None:
        """The quant method's post-processing (FP8 per-tensor fused layers: one scale)."""
        self.quant_method.process_weights_after_loading(self)


class ColumnParallelLinear(LinearBase):
    """Output dimension (dim 0 of weight and bias) split into contiguous blocks, one per rank."""

    def __init__(self, input_size, output_size, bias, placement, dtype, *, quant=None) -> None:
        super().__init__(placement, dtype)
        self.input_size = input_size
        self.output_size = output_size
        self.output_size_per_partition = divide(output_size, self.tp_size, "column-parallel output")
        self.create_weights(self.output_size_per_partition, input_size, None, bias, quant)

    def row_pieces(self) -> list[RowPiece]:
        size = self.output_size_per_partition
        return [RowPiece(None, self.output_size, self.tp_rank * size, size, 0)]

    def col_piece(self) -> ColPiece:
        return ColPiece(self.input_size, 0, self.input_size)

    @torch.no_grad()
    def weight_loader(self, param, loaded_weight, loaded_shard_id=None) -> None:
        if loaded_shard_id is not None:
            raise ValueError(f"column-parallel layer has no shard {loaded_shard_id!r}")
        check_shape(loaded_weight, (self.output_size, *param.shape[1:]), "column-parallel")
        size = self.output_size_per_partition
        param.data.copy_(loaded_weight.narrow(0, self.tp_rank * size, size))


class MergedColumnParallelLinear(LinearBase):
    """Several column-parallel outputs (``gate_up_proj``: shard 0 gate, 1 up) fused per rank.

    Each rank's rows are ``[piece0_r | piece1_r | ...]``: every piece is sharded on its own, then
    concatenated, so a rank never holds a contiguous slice of the *concatenated* checkpoint.
    """

    def __init__(
        self, input_size, output_sizes: Sequence[int], bias, placement, dtype, *,
        quant=None, disable_tp: bool = False,
    ) -> None:
        super().__init__(placement, dtype, disable_tp)
        self.input_size = input_size
        self.output_sizes = tuple(output_sizes)
        self.sizes_per_partition = tuple(
            divide(n, self.tp_size, f"merged column-parallel output {k}")
            for k, n in enumerate(self.output_sizes)
        )
        shards = tuple(range(len(self.output_sizes)))
        rows = sum(self.sizes_per_partition)
        self.create_weights(rows, input_size, shards, bias, quant)

    def row_pieces(self) -> list[RowPiece]:
        pieces, offset = [], 0
        for shard, (full, size) in enumerate(zip(self.output_sizes, self.sizes_per_partition)):
            pieces.append(RowPiece(shard, full, self.tp_rank * size, size, offset))
            offset += size
        return pieces

    def col_piece(self) -> ColPiece:
        return ColPiece(self.input_size, 0, self.input_size)

    @torch.no_grad()
    def weight_loader(self, param, loaded_weight, loaded_shard_id=None) -> None:
        if loaded_shard_id is None:
            # Already fused on disk: split by the full (unsharded) piece sizes, then load each.
            check_shape(loaded_weight, (sum(self.output_sizes), *param.shape[1:]), "merged")
            for shard, piece in enumerate(loaded_weight.split(self.output_sizes, dim=0)):
                self.weight_loader(param, piece, shard)
            return
        if loaded_shard_id not in range(len(self.output_sizes)):
            raise ValueError(f"merged column-parallel layer has no shard {loaded_shard_id!r}")
        full = self.output_sizes[loaded_shard_id]
        check_shape(loaded_weight, (full, *param.shape[1:]), f"merged shard {loaded_shard_id}")
        size = self.sizes_per_partition[loaded_shard_id]
        offset = sum(self.sizes_per_partition[:loaded_shard_id])
        param.data.narrow(0, offset, size).copy_(loaded_weight.narrow(0, self.tp_rank * size, size))


class QKVParallelLinear(LinearBase):
    """Fused q/k/v projection; rows on a rank are ``[q_r | k_r | v_r]``.

    With more ranks than kv heads (GQA replication) every rank still needs a whole kv head, so
    ``T / nKV`` consecutive ranks share one: rank r holds kv head ``r // (T / nKV)``.
    """

    def __init__(
        self, hidden_size, head_dim, total_num_heads, total_num_kv_heads, bias, placement, dtype,
        *, quant=None,
    ) -> None:
        super().__init__(placement, dtype)
        self.hidden_size = hidden_size
        self.head_dim = head_dim
        self.total_num_heads = total_num_heads
        self.total_num_kv_heads = total_num_kv_heads
        self.num_heads = divide(total_num_heads, self.tp_size, "query heads per rank")
        if self.tp_size >= total_num_kv_heads:
            self.num_kv_heads = 1
            self.kv_replicas = divide(self.tp_size, total_num_kv_heads, "kv head replication")
        else:
            self.num_kv_heads = divide(total_num_kv_heads, self.tp_size, "kv heads per rank")
            self.kv_replicas = 1
        rows = (self.num_heads + 2 * self.num_kv_heads) * head_dim
        self.create_weights(rows, hidden_size, ("q", "k", "v"), bias, quant)

    def row_pieces(self) -> list[RowPiece]:
        pieces = []
        for shard in ("q", "k", "v"):
            full, size, offset, start = self._shard_geometry(shard)
            pieces.append(RowPiece(shard, full, start, size, offset))
        return pieces

    def col_piece(self) -> ColPiece:
        return ColPiece(self.hidden_size, 0, self.hidden_size)

    def _shard_geometry(self, shard_id) -> tuple[int, int, int, int]:
        """(full checkpoint rows, rows on this rank, offset in param, start in checkpoint)."""
        q_rows = self.num_heads * self.head_dim
        kv_rows = self.num_kv_heads * self.head_dim
        kv_start = (self.tp_rank // self.kv_replicas) * kv_rows
        if shard_id == "q":
            return self.total_num_heads * self.head_dim, q_rows, 0, self.tp_rank * q_rows
        if shard_id == "k":
            return self.total_num_kv_heads * self.head_dim, kv_rows, q_rows, kv_start
        if shard_id == "v":
            return self.total_num_kv_heads * self.head_dim, kv_rows, q_rows + kv_rows, kv_start
        raise ValueError(f"QKV layer has no shard {shard_id!r}")

    @torch.no_grad()
    def weight_loader(self, param, loaded_weight, loaded_shard_id=None) -> None:
        if loaded_shard_id is None:
            # Fused on disk (GPT-2 c_attn): the split is by TOTAL head counts, never per rank.
            sizes = [self._shard_geometry(s)[0] for s in ("q", "k", "v")]
            check_shape(loaded_weight, (sum(sizes), *param.shape[1:]), "fused qkv")
            for shard, piece in zip(("q", "k", "v"), loaded_weight.split(sizes, dim=0)):
                self.weight_loader(param, piece, shard)
            return
        full, size, offset, start = self._shard_geometry(loaded_shard_id)
        check_shape(loaded_weight, (full, *param.shape[1:]), f"qkv shard {loaded_shard_id}")
        param.data.narrow(0, offset, size).copy_(loaded_weight.narrow(0, start, size))


class RowParallelLinear(LinearBase):
    """Input dimension (dim 1) split per rank; the bias is added once after the all-reduce, so
    every rank holds all of it."""

    def __init__(self, input_size, output_size, bias, placement, dtype, *, quant=None) -> None:
        super().__init__(placement, dtype)
        self.input_size = input_size
        self.output_size = output_size
        self.input_size_per_partition = divide(input_size, self.tp_size, "row-parallel input")
        self.create_weights(
            output_size, self.input_size_per_partition, None, bias, quant,
            bias_loader=default_weight_loader,
        )

    def row_pieces(self) -> list[RowPiece]:
        return [RowPiece(None, self.output_size, 0, self.output_size, 0)]

    def col_piece(self) -> ColPiece:
        size = self.input_size_per_partition
        return ColPiece(self.input_size, self.tp_rank * size, size)

    @torch.no_grad()
    def weight_loader(self, param, loaded_weight, loaded_shard_id=None) -> None:
        if loaded_shard_id is not None:
            raise ValueError(f"row-parallel layer has no shard {loaded_shard_id!r}")
        check_shape(loaded_weight, (self.output_size, self.input_size), "row-parallel")
        size = self.input_size_per_partition
        param.data.copy_(loaded_weight.narrow(1, self.tp_rank * size, size))


class VocabParallelEmbedding(_TPLayer):
    """Vocab padded to a multiple of 64 (and of tp_size), then split into contiguous row blocks per rank.

    The rows past the real vocabulary are zeroed explicitly at load time: they start as NaN like
    every other entry, and logits computed from a NaN row would poison the whole softmax.
    """

    def __init__(self, num_embeddings, embedding_dim, placement, dtype) -> None:
        super().__init__(placement, dtype)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.num_embeddings_padded = pad_vocab(num_embeddings, self.tp_size)
        self.num_embeddings_per_partition = divide(
            self.num_embeddings_padded, self.tp_size, "padded vocabulary rows per rank"
        )
        self.weight = self._param((self.num_embeddings_per_partition, embedding_dim))

    @torch.no_grad()
    def weight_loader(self, param, loaded_weight, loaded_shard_id=None) -> None:
        if loaded_shard_id is not None:
            raise ValueError(f"vocab-parallel layer has no shard {loaded_shard_id!r}")
        check_shape(loaded_weight, (self.num_embeddings, self.embedding_dim), "vocab-parallel")
        per_rank = self.num_embeddings_per_partition
        start = self.tp_rank * per_rank
        real = max(0, min(per_rank, self.num_embeddings - start))
        if real:
            param.data[:real].copy_(loaded_weight.narrow(0, start, real))
        param.data[real:].zero_()


class ParallelLMHead(VocabParallelEmbedding):
    """An untied output projection; same layout as the embedding it would otherwise alias."""


class ReplicatedEmbedding(_TPLayer):
    """A plain embedding every rank holds whole (GPT-2's learned positions ``wpe``)."""

    def __init__(self, num_embeddings, embedding_dim, placement, dtype) -> None:
        super().__init__(placement, dtype)
        self.weight = self._param((num_embeddings, embedding_dim), loader=default_weight_loader)


class RMSNorm(_TPLayer):
    def __init__(self, hidden_size, placement, dtype) -> None:
        super().__init__(placement, dtype)
        self.weight = self._param((hidden_size,), loader=default_weight_loader)


class LayerNorm(_TPLayer):
    def __init__(self, hidden_size, placement, dtype) -> None:
        super().__init__(placement, dtype)
        self.weight = self._param((hidden_size,), loader=default_weight_loader)
        self.bias = self._param((hidden_size,), loader=default_weight_loader)


class PPMissingLayer(nn.Module):
    """Stands in for a module another pipeline rank owns, so global layer indices survive in
    parameter names (``model.layers.5.…`` stays 5 on the rank that holds layers 4..7)."""


class ReplicatedLinear(LinearBase):
    """A linear layer every rank holds whole (MoE router ``mlp.gate``, ``shared_expert_gate``,
    the indexer's ``wq_b``)."""

    def __init__(self, input_size, output_size, bias, placement, dtype, *, quant=None) -> None:
        super().__init__(placement, dtype)
        self.input_size = input_size
        self.output_size = output_size
        self.create_weights(
            output_size, input_size, None, bias, quant,
            weight_loader=default_weight_loader, bias_loader=default_weight_loader,
        )

    def row_pieces(self) -> list[RowPiece]:
        return [RowPiece(None, self.output_size, 0, self.output_size, 0)]

    def col_piece(self) -> ColPiece:
        return ColPiece(self.input_size, 0, self.input_size)


class MergedReplicatedLinear(MergedColumnParallelLinear):
    """Several outputs fused on rows and held whole by every rank (vLLM's ``disable_tp=True``;
    ``deepseek_v32``'s ``fused_qkv_a_proj``)."""

    def __init__(self, input_size, output_sizes, bias, placement, dtype, *, quant=None) -> None:
        super().__init__(
            input_size, output_sizes, bias, placement, dtype, quant=quant, disable_tp=True
        )


def layer_quant(arch, modules: Sequence[str]) -> Quant | None:
    """The ``Quant`` a runtime layer built from checkpoint ``modules`` is created with.

    A fused layer (q/k/v, gate/up, all experts of a FusedMoE) is one FP8 layer or none: its
    checkpoint modules are quantised or ignored together, anything else cannot be built.
    """
    flags = {arch.fp8(module) for module in modules}
    if len(flags) > 1:
        quantised = sorted(m for m in modules if arch.fp8(m))
        ignored = sorted(m for m in modules if not arch.fp8(m))
        raise ValueError(
            f"a fused layer must be quantised or ignored whole: {quantised} are FP8, "
            f"{ignored} ignored"
        )
    return arch.quant if flags and flags.pop() else None
