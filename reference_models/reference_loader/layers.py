"""Tensor-parallel layers in vLLM's style, reduced to what loading needs: parameters and loaders.

Each parameter carries a ``weight_loader(param, loaded_weight, loaded_shard_id=None)`` callback,
as in vLLM, so a model's ``load_weights`` only routes checkpoint tensors; all the slicing of the
TP layout (docs/runtime-layout.md) lives here, next to the shapes it produces.

Parameters start as NaN rather than zeros: a zero is a plausible weight (and exactly what a
vocab padding row must hold), so an entry the loader never wrote must be impossible to mistake
for one it did.  Loaders raise ``ValueError`` on a checkpoint tensor of the wrong shape instead of
``assert``-ing, so the check survives ``python -O``.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import torch
from torch import nn

from reference_models.arch import Placement

VOCAB_PADDING = 64


def divide(numerator: int, denominator: int, what: str) -> int:
    """Exact division; a TP size that does not divide a dimension is a build error, not a floor."""
    if denominator <= 0 or numerator % denominator:
        raise ValueError(f"{what}: {numerator} is not divisible by {denominator}")
    return numerator // denominator


def pad_vocab(vocab_size: int, tp_size: int = 1) -> int:
    """Round up to a multiple of 64 that ``tp_size`` also divides (vLLM's rule when tp | 64)."""
    step = VOCAB_PADDING
    while step % tp_size:
        step += VOCAB_PADDING
    return -(-vocab_size // step) * step


def new_parameter(
    shape: Sequence[int],
    dtype: torch.dtype,
    device: str | torch.device,
    weight_loader,
    shard_ids: tuple[Hashable, ...] | None = None,
) -> nn.Parameter:
    """An uninitialised parameter, NaN-filled so that a tensor never loaded stays visible.

    ``shard_ids`` names the checkpoint pieces a fused parameter is built from; the tracker in
    ``tracking.py`` counts the parameter as loaded only once all of them have arrived.
    """
    data = torch.empty(tuple(shape), dtype=dtype, device=device)
    if data.is_floating_point():
        data.fill_(float("nan"))
    param = nn.Parameter(data, requires_grad=False)
    param.weight_loader = weight_loader
    param.shard_ids = shard_ids
    return param


def check_shape(loaded: torch.Tensor, expected: Sequence[int], what: str) -> None:
    if tuple(loaded.shape) != tuple(expected):
        raise ValueError(
            f"{what}: checkpoint tensor has shape {tuple(loaded.shape)}, expected {tuple(expected)}"
        )


@torch.no_grad()
def default_weight_loader(
    param: nn.Parameter, loaded_weight: torch.Tensor, loaded_shard_id=None
) -> None:
    """Copy a replicated tensor whole; ``copy_`` casts to the parameter's dtype, as vLLM does."""
    if loaded_shard_id is not None:
        raise ValueError(f"a replicated parameter has no shard {loaded_shard_id!r}")
    check_shape(loaded_weight, param.shape, "replicated parameter")
    param.data.copy_(loaded_weight)


class _TPLayer(nn.Module):
    """Remembers this rank's TP coordinates, taken from the ``Placement`` it was built for."""

    def __init__(self, placement: Placement, dtype: torch.dtype) -> None:
        super().__init__()
        self.tp_rank = placement.tp_rank
        self.tp_size = placement.tp_size
        self.dtype = dtype
        self.device = placement.device

    def _param(self, shape, loader=None, shard_ids=None) -> nn.Parameter:
        return new_parameter(shape, self.dtype, self.device, loader or self.weight_loader, shard_ids)

    def weight_loader(self, param, loaded_weight, loaded_shard_id=None) -> None:
        raise NotImplementedError


class ColumnParallelLinear(_TPLayer):
    """Output dimension (dim 0 of weight and bias) split into contiguous blocks, one per rank."""

    def __init__(self, input_size, output_size, bias, placement, dtype) -> None:
        super().__init__(placement, dtype)
        self.input_size = input_size
        self.output_size = output_size
        self.output_size_per_partition = divide(output_size, self.tp_size, "column-parallel output")
        self.weight = self._param((self.output_size_per_partition, input_size))
        self.bias = self._param((self.output_size_per_partition,)) if bias else None

    @torch.no_grad()
    def weight_loader(self, param, loaded_weight, loaded_shard_id=None) -> None:
        if loaded_shard_id is not None:
            raise ValueError(f"column-parallel layer has no shard {loaded_shard_id!r}")
        check_shape(loaded_weight, (self.output_size, *param.shape[1:]), "column-parallel")
        size = self.output_size_per_partition
        param.data.copy_(loaded_weight.narrow(0, self.tp_rank * size, size))


class MergedColumnParallelLinear(_TPLayer):
    """Several column-parallel outputs (``gate_up_proj``: shard 0 gate, 1 up) fused per rank.

    Each rank's rows are ``[piece0_r | piece1_r | ...]``: every piece is sharded on its own, then
    concatenated, so a rank never holds a contiguous slice of the *concatenated* checkpoint.
    """

    def __init__(self, input_size, output_sizes: Sequence[int], bias, placement, dtype) -> None:
        super().__init__(placement, dtype)
        self.input_size = input_size
        self.output_sizes = tuple(output_sizes)
        self.sizes_per_partition = tuple(
            divide(n, self.tp_size, f"merged column-parallel output {k}")
            for k, n in enumerate(self.output_sizes)
        )
        shards = tuple(range(len(self.output_sizes)))
        rows = sum(self.sizes_per_partition)
        self.weight = self._param((rows, input_size), shard_ids=shards)
        self.bias = self._param((rows,), shard_ids=shards) if bias else None

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


class QKVParallelLinear(_TPLayer):
    """Fused q/k/v projection; rows on a rank are ``[q_r | k_r | v_r]``.

    With more ranks than kv heads (GQA replication) every rank still needs a whole kv head, so
    ``T / nKV`` consecutive ranks share one: rank r holds kv head ``r // (T / nKV)``.
    """

    def __init__(
        self, hidden_size, head_dim, total_num_heads, total_num_kv_heads, bias, placement, dtype
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
        shards = ("q", "k", "v")
        self.weight = self._param((rows, hidden_size), shard_ids=shards)
        self.bias = self._param((rows,), shard_ids=shards) if bias else None

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


class RowParallelLinear(_TPLayer):
    """Input dimension (dim 1) split per rank; the bias is added once after the all-reduce, so
    every rank holds all of it."""

    def __init__(self, input_size, output_size, bias, placement, dtype) -> None:
        super().__init__(placement, dtype)
        self.input_size = input_size
        self.output_size = output_size
        self.input_size_per_partition = divide(input_size, self.tp_size, "row-parallel input")
        self.weight = self._param((output_size, self.input_size_per_partition))
        self.bias = self._param((output_size,), loader=default_weight_loader) if bias else None

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


class ReplicatedLinear(_TPLayer):
    """A linear layer every rank holds whole (MoE router ``mlp.gate``, ``shared_expert_gate``)."""

    def __init__(self, input_size, output_size, bias, placement, dtype) -> None:
        super().__init__(placement, dtype)
        self.input_size = input_size
        self.output_size = output_size
        self.weight = self._param((output_size, input_size), loader=default_weight_loader)
        self.bias = self._param((output_size,), loader=default_weight_loader) if bias else None
