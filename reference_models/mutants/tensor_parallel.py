"""Tensor-parallel slicing: GQA kv-head replication and vocabulary padding."""

from __future__ import annotations

import types

import torch

from weightcheck.reference_models.reference_loader.layers import (
    QKVParallelLinear,
    VocabParallelEmbedding,
)

from .base import Mutant, MutantLoader, patch_modules


def _kv_head_modulo(self, shard_id):
    full, size, offset, start = QKVParallelLinear._shard_geometry(self, shard_id)
    if shard_id in ("k", "v"):
        start = (self.tp_rank % self.total_num_kv_heads) * size if self.kv_replicas > 1 else start
    return full, size, offset, start


@torch.no_grad()
def _padding_left_alone(self, param, loaded_weight, loaded_shard_id=None):
    per_rank = self.num_embeddings_per_partition
    start = self.tp_rank * per_rank
    real = max(0, min(per_rank, self.num_embeddings - start))
    if real:
        param.data[:real].copy_(loaded_weight.narrow(0, start, real))


def _vocab_padding_not_zeroed(model):
    for module in model.modules():
        if isinstance(module, VocabParallelEmbedding):
            module.weight.weight_loader = types.MethodType(_padding_left_alone, module)


MUTANTS = [
    Mutant(
        "gqa_kv_head_modulo",
        "with tp_size > num_kv_heads, rank r takes kv head r % nKV instead of r // (T / nKV)",
        "GQA replication (vLLM QKVParallelLinear, docs/runtime-layout.md)",
        "roundtrip",
        ("llama",),
        MutantLoader(
            "gqa_kv_head_modulo", patch=patch_modules(QKVParallelLinear, "_shard_geometry", _kv_head_modulo)
        ),
        "shard k",
    ),
    Mutant(
        "vocab_padding_not_zeroed",
        "vocab padding rows are left uninitialised instead of zero",
        "vLLM VocabParallelEmbedding padding rule",
        "roundtrip",
        ("llama", "gpt2"),
        MutantLoader("vocab_padding_not_zeroed", patch=_vocab_padding_not_zeroed),
        "vocab padding",
    ),
]
