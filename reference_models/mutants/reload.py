"""A second load into a built model (weight sync)."""

from __future__ import annotations

import types

import torch
from torch import nn

from weightcheck.reference_models.reference_loader.layers import LinearBase
from weightcheck.reference_models.reference_loader.loader import ReferenceLoader

from .base import Mutant, MutantLoader


class LoadsEachParameterOnce(ReferenceLoader):
    """Parameters already initialised are skipped on a later load (an "is initialised" flag
    kept across loads, as transformers' ``_is_hf_initialized``), so weight sync is a no-op."""

    name = "mutant loads each parameter once"

    def load(self, model, checkpoint):
        done = getattr(model, "_weightcheck_loaded", None)
        if done is not None:
            return set(done)
        model._weightcheck_loaded = loaded = super().load(model, checkpoint)
        return loaded


MUTANTS = [
    Mutant(
        "loads_each_parameter_once",
        "a second load skips parameters already initialised (weight sync does nothing)",
        "transformers _is_hf_initialized / RL weight-sync reloads",
        "reload",
        ("llama", "qwen2_moe"),
        LoadsEachParameterOnce(),
        "reload",
    ),
]


# --- reload after processing (RL weight sync into a processed model) ---------------------------


def _per_tensor_fused(module) -> bool:
    quant = getattr(module, "quant", None)
    return quant is not None and quant.method == "fp8_per_tensor" and len(getattr(module, "shard_order", ())) > 1


@torch.no_grad()
def _replacing_parameters(self):
    """vLLM's older FP8 processing: the requantised layer gets new one-element scale
    parameters, made with ``nn.Parameter`` and so without the ``weight_loader`` a second load
    needs (SGLang #30749: post-load processing drops weight_loader)."""
    self.quant_method.process_weights_after_loading(self)
    self.weight_scale = nn.Parameter(self.weight_scale.data.max().clone(), requires_grad=False)


def _drops_weight_loader(model):
    for module in model.modules():
        if isinstance(module, LinearBase) and _per_tensor_fused(module):
            module.process_weights_after_loading = types.MethodType(_replacing_parameters, module)


def _once(self, process=None):
    """Processing guarded by a flag set the first time (vLLM #48284's shape: the repack is not
    repeated after a reload, so the second checkpoint stays in the unprocessed layout)."""
    if getattr(self, "_processed", False):
        return
    self._processed = True
    self.quant_method.process_weights_after_loading(self)


def _processed_once(model):
    for module in model.modules():
        if isinstance(module, LinearBase):
            module.process_weights_after_loading = types.MethodType(_once, module)


@torch.no_grad()
def _reallocating(self):
    """Right values, new storage: the processed weight and scales are new tensors (the in-place
    reload vLLM's layerwise reload relies on is broken: data_ptr changes)."""
    self.quant_method.process_weights_after_loading(self)
    for name in ("weight", "weight_scale"):
        old = getattr(self, name)
        new = nn.Parameter(old.data.clone(), requires_grad=False)
        new.weight_loader, new.shard_ids = old.weight_loader, old.shard_ids
        setattr(self, name, new)


def _reallocates(model):
    for module in model.modules():
        if isinstance(module, LinearBase) and _per_tensor_fused(module):
            module.process_weights_after_loading = types.MethodType(_reallocating, module)


MUTANTS += [
    Mutant(
        "processing_drops_weight_loader",
        "post-load processing replaces scales with new parameters that have no weight_loader",
        "SGLang #30749 (update_weights_from_disk after processing), vLLM's pre-layerwise FP8 path",
        "reload_processed",
        ("llama", "qwen2_moe"),
        MutantLoader("processing_drops_weight_loader", patch=_drops_weight_loader),
        "reload after processing",
    ),
    Mutant(
        "processed_once",
        "processing runs once per model: after a reload the second checkpoint is never repacked",
        "vLLM #48284 (reloading is not idempotent), processed-flag guards",
        "reload_processed",
        ("llama", "qwen3_moe"),
        MutantLoader("processed_once", patch=_processed_once),
        "differ from a fresh load and processing",
    ),
    Mutant(
        "processing_reallocates",
        "processing gives the weight and scales new storage (right values)",
        "vLLM layerwise reload: writes must keep data_ptr",
        "reload_processed",
        ("llama",),
        MutantLoader("processing_reallocates", patch=_reallocates),
        "new storage",
    ),
]
