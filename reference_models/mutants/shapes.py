"""Tensors of the wrong shape or dtype loaded anyway: narrowed, reshaped, kept, reinterpreted."""

from __future__ import annotations

import types

import torch

from weightcheck.reference_models.reference_loader.layers import (
    ColumnParallelLinear,
    default_weight_loader,
)

from .base import Mutant, MutantLoader


@torch.no_grad()
def _narrow_unchecked(self, param, loaded_weight, loaded_shard_id=None):
    """vLLM's ColumnParallelLinear.weight_loader: narrow to this rank's rows, then compare the
    narrowed piece with the parameter, so rows past the layer's size are never looked at."""
    shard_size = param.data.shape[0]
    loaded_weight = loaded_weight.narrow(0, self.tp_rank * shard_size, shard_size)
    assert param.data.shape == loaded_weight.shape
    param.data.copy_(loaded_weight)


def _column_parallel_narrowed_unchecked(model):
    for module in model.modules():
        if isinstance(module, ColumnParallelLinear):
            for param in module.parameters(recurse=False):
                if param.weight_loader == module.weight_loader:
                    param.weight_loader = types.MethodType(_narrow_unchecked, module)


def _replace_default_loader(model, loader) -> None:
    for param in model.parameters():
        if getattr(param, "weight_loader", None) is default_weight_loader:
            param.weight_loader = loader


@torch.no_grad()
def _reshaped_to_fit(param, loaded_weight, loaded_shard_id=None):
    """A legacy-layout fix-up: any tensor with the parameter's element count is reshaped to it."""
    param.data.copy_(loaded_weight.reshape(param.shape))


@torch.no_grad()
def _keeps_checkpoint_tensor(param, loaded_weight, loaded_shard_id=None):
    """The fast path ``param.data = loaded_weight``: no copy, and no cast either."""
    if tuple(loaded_weight.shape) != tuple(param.shape):
        raise ValueError(f"shape {tuple(loaded_weight.shape)}, expected {tuple(param.shape)}")
    param.data = loaded_weight


@torch.no_grad()
def _bytes_in_param_dtype(param, loaded_weight, loaded_shard_id=None):
    """A zero-copy reader that reads the buffer in the parameter's dtype, not the header's."""
    if loaded_weight.element_size() == param.element_size():
        loaded_weight = loaded_weight.view(param.dtype)
    default_weight_loader(param, loaded_weight)


MUTANTS = [
    Mutant(
        "column_parallel_narrowed_unchecked",
        "a column-parallel tensor is narrowed to the rank's rows before any size check",
        "vLLM layers/linear.py ColumnParallelLinear.weight_loader (narrow, then assert the slice)",
        "wrong_shape",
        ("gpt2",),
        MutantLoader("column_parallel_narrowed_unchecked", patch=_column_parallel_narrowed_unchecked),
        "accepted without an error",
    ),
    Mutant(
        "replicated_reshaped_to_fit",
        "a replicated tensor of the right element count is reshaped to the parameter",
        "legacy-layout fix-ups in weight loaders (reshape to param.shape)",
        "wrong_shape",
        ("llama",),
        MutantLoader("replicated_reshaped_to_fit", patch=lambda m: _replace_default_loader(m, _reshaped_to_fit)),
        "accepted without an error",
    ),
    Mutant(
        "checkpoint_tensor_kept",
        "param.data = loaded_weight: the parameter takes the checkpoint's dtype",
        "`param.data = loaded_weight` fast paths in engine loaders",
        "foreign_dtype",
        ("llama",),
        MutantLoader("checkpoint_tensor_kept", patch=lambda m: _replace_default_loader(m, _keeps_checkpoint_tensor)),
        "not loaded as its exact cast",
    ),
    Mutant(
        "bytes_read_in_param_dtype",
        "a 16-bit tensor's bytes read in the parameter's 16-bit dtype (bf16 as fp16)",
        "zero-copy readers typed by the parameter (SGLang #38908's RunAI buffer class)",
        "foreign_dtype",
        ("llama",),
        MutantLoader("bytes_read_in_param_dtype", patch=lambda m: _replace_default_loader(m, _bytes_in_param_dtype)),
        "not loaded as its exact cast",
    ),
]
