"""FP8 quantisation: seeds PR #41086 (FP8 half) and PR #42944, and vLLM's FP8 scale handling."""

from __future__ import annotations

import types

import torch
from torch import nn

from weightcheck.families import FAMILIES
from weightcheck.reference_models.reference_loader.deepseek_v32 import (
    DeepseekV32ForCausalLM,
)
from weightcheck.reference_models.reference_loader.layers import (
    LinearBase,
    block_cover,
    ceil_div,
)
from weightcheck.reference_models.reference_loader.loader import ReferenceLoader
from weightcheck.reference_models.reference_loader.tracking import tracker_for

from .base import Mutant, MutantLoader

FP8_FAMILIES = tuple(f.name for f in FAMILIES.values() if f.fp8_methods)


class QuantizedModulesExempted(ReferenceLoader):
    """track_weights_loading as merged in #41086: every parameter of a module with a quant
    method counts as loaded, so its missing bias, scale or input scale goes unnoticed."""

    def __init__(self):
        self.name = "mutant quantized_module_exempted"

    def check_loaded(self, model, loaded):
        loaded = set(loaded)
        for prefix, module in model.named_modules():
            if getattr(module, "quant", None) is not None:
                loaded |= {f"{prefix}.{name}" for name, _ in module.named_parameters()}
        super().check_loaded(model, loaded)


class IndexerLookupBeforePPCheck(DeepseekV32ForCausalLM):
    """_try_load_fp8_indexer_wk before #42944: the fused parameter is looked up before asking
    whether this PP rank holds the layer (KeyError on every rank without layer 0)."""

    def load_weights(self, weights):
        tracker = tracker_for(self)
        params = dict(self.named_parameters())
        for name, loaded_weight in weights:
            leaf = self.wk_leaf(name)
            if leaf is not None:
                params[name.rsplit(".", 2)[0] + ".wk_weights_proj.weight"]  # KeyError under PP
            if self.is_skipped(name) or self.is_on_other_rank(name):
                continue
            if leaf is not None:
                self.load_wk(tracker, name, leaf, loaded_weight)
            else:
                self.load_dense(tracker, name, loaded_weight)
        return tracker.loaded()


class PendingWkPerCall(DeepseekV32ForCausalLM):
    """The pending FP8 wk half lives for one load_weights call (a local buffer): when the
    weight and its scale sit in different files, AutoWeightsLoader-style per-file calls lose it."""

    def load_weights(self, weights):
        self.reset_pending()
        return super().load_weights(weights)


def _naive_block_scale_loader(self, param, loaded_weight, loaded_shard_id=None):
    """vLLM's BlockQuantScaleParameter narrowing: rank r takes blocks
    [r * ceil(n/bn), (r + 1) * ceil(n/bn)), right only when bn divides the rank's rows."""
    bn, bk = self.quant.block
    col = self.col_piece()
    offset = 0
    for piece in self.row_pieces():
        nr = block_cover(piece.start, piece.size, bn)[1]
        if piece.shard == loaded_shard_id:
            n, k = ceil_div(piece.size, bn), ceil_div(col.size, bk)
            r0, c0 = (piece.start // piece.size) * n, (col.start // col.size) * k
            block = loaded_weight[r0 : r0 + n, c0 : c0 + k]
            rows, cols = min(nr, block.shape[0]), min(param.shape[1], block.shape[1])
            param.data[offset : offset + rows, :cols].copy_(block[:rows, :cols])
            return
        offset += nr


def _narrow_block_scales_naively(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, LinearBase) and hasattr(module, "weight_scale_inv"):
            module.weight_scale_inv.weight_loader = types.MethodType(_naive_block_scale_loader, module)


def _one_scale_for_all_shards(self, param, loaded_weight, loaded_shard_id=None):
    param.data.fill_(loaded_weight.reshape(()).item())  # every shard gets the last one's scale


def _collapse_fused_scales(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, LinearBase) and hasattr(module, "weight_scale"):
            module.weight_scale.weight_loader = types.MethodType(_one_scale_for_all_shards, module)


def _upcast_fp8_weights(model: nn.Module) -> None:
    """FP8 weights allocated in the model dtype: copy_ silently dequantises without scale."""
    for module in model.modules():
        weight = module.__dict__.get("_parameters", {}).get("weight")
        if weight is not None and weight.dtype == torch.float8_e4m3fn:
            new = nn.Parameter(torch.empty(weight.shape, dtype=module.dtype), requires_grad=False)
            new.weight_loader, new.shard_ids = weight.weight_loader, weight.shard_ids
            module.weight = new


class ScalesTrackedWithWeight(ReferenceLoader):
    """Reports a module's scales as loaded whenever its weight is (one name check per module)."""

    def __init__(self):
        self.name = "mutant scales_tracked_with_weight"

    def load(self, model, checkpoint):
        loaded = super().load(model, checkpoint)
        names = dict(model.named_parameters())
        for name in list(loaded):
            stem = name.removesuffix("weight")
            loaded |= {stem + s for s in ("weight_scale", "weight_scale_inv", "input_scale") if stem + s in names}
        return loaded


MUTANTS = [
    Mutant(
        "quantized_module_exempted",
        "the completeness check counts every parameter of a quantized module as loaded",
        "vLLM PR #41086 (track_weights_loading: quant_method modules exempted wholesale)",
        "check_loaded",
        FP8_FAMILIES,
        QuantizedModulesExempted(),
        "stayed silent",
    ),
    Mutant(
        "indexer_lookup_before_pp_check",
        "the FP8 indexer wk's fused parameter is looked up before the PP-missing-layer check",
        "vLLM PR #42944 (GLM-5.1-FP8, pipeline parallel: KeyError wk_weights_proj)",
        "roundtrip",
        ("deepseek_v32",),
        MutantLoader("indexer_lookup_before_pp_check", {"deepseek_v32": IndexerLookupBeforePPCheck}),
        "KeyError",
    ),
    Mutant(
        "pending_wk_per_load_call",
        "an FP8 wk waiting for its scale is dropped at the end of one load_weights call",
        "vLLM models/deepseek_v2.py (AutoWeightsLoader calls load_weights once per run of names)",
        "roundtrip",
        ("deepseek_v32",),
        MutantLoader("pending_wk_per_load_call", {"deepseek_v32": PendingWkPerCall}),
        "wk_weights_proj",
    ),
    Mutant(
        "block_scales_narrowed_by_rank",
        "block scales narrowed at rank * ceil(rows/bn): wrong when the TP split cuts a block",
        "vLLM layers/linear.py BlockQuantScaleParameter (validate_fp8_block_shape refuses these)",
        "roundtrip",
        ("llama", "qwen2_moe", "deepseek_v32"),
        MutantLoader("block_scales_narrowed_by_rank", patch=_narrow_block_scales_naively),
        "weight_scale_inv",
    ),
    Mutant(
        "fused_scales_collapsed",
        "per-tensor scales of a fused layer written to every entry (the last shard's wins)",
        "vLLM fp8.py per-tensor fused layers (scales kept per logical shard until requantised)",
        "roundtrip",
        ("llama", "qwen3_moe", "qwen2_moe"),
        MutantLoader("fused_scales_collapsed", patch=_collapse_fused_scales),
        "weight_scale",
    ),
    Mutant(
        "fp8_weights_upcast",
        "FP8 weights allocated in the model dtype: copy_ upcasts without the scale",
        "default_weight_loader's silent copy_ cast (vLLM model_loader/weight_utils.py)",
        "roundtrip",
        FP8_FAMILIES,
        MutantLoader("fp8_weights_upcast", patch=_upcast_fp8_weights),
        "dtype",
    ),
    Mutant(
        "scales_tracked_with_weight",
        "a module's scales are reported loaded whenever its weight is",
        "vLLM track_weights_loading (scales of online/offline quantization assumed present)",
        "missing_tensor",
        ("llama", "qwen3_moe", "deepseek_v32"),
        ScalesTrackedWithWeight(),
        "reported as loaded but should not be",
    ),
]
