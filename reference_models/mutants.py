"""Deliberately buggy loaders ("mutants"), each reproducing one realistic loading bug.

Every property of the suite must fail against at least one of these; the reference loader
they are derived from must pass everything.  Each mutant changes one decision of the
reference loader, the way the real bug did, and names where that bug was seen.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from weightcheck.families import FAMILIES

from weightcheck.reference_models.reference_loader.gpt2 import CONV1D_MODULES, GPT2LMHeadModel
from weightcheck.reference_models.reference_loader.deepseek_v32 import DeepseekV32ForCausalLM
from weightcheck.reference_models.reference_loader.layers import (
    LinearBase,
    QKVParallelLinear,
    VocabParallelEmbedding,
    block_cover,
    ceil_div,
)
from weightcheck.reference_models.reference_loader.llama import LlamaForCausalLM
from weightcheck.reference_models.reference_loader.loader import ReferenceLoader, model_class
from weightcheck.reference_models.reference_loader.moe import FusedMoE
from weightcheck.reference_models.reference_loader.qwen3_moe import Qwen3MoeForCausalLM
from weightcheck.reference_models.reference_loader.tracking import tracker_for


@dataclass(frozen=True)
class Mutant:
    name: str
    bug: str
    origin: str
    caught_by: str  # the property expected to catch it
    families: tuple[str, ...]
    loader: object
    message: str  # a fragment the failure message must contain


class MutantLoader(ReferenceLoader):
    """The reference loader with other model classes and/or a patch applied after building."""

    def __init__(self, name, models=None, patch: Callable[[nn.Module], None] | None = None):
        self.name = f"mutant {name}"
        self.models = models or {}
        self.patch = patch

    def build(self, arch, placement):
        model = self.models.get(arch.family, model_class(arch.family))(arch, placement)
        if self.patch:
            self.patch(model)
        return model


def _patch_modules(kind: type, method: str, replacement: Callable) -> Callable[[nn.Module], None]:
    """Rebind ``method`` on every ``kind`` instance of one model (never on the class)."""

    def patch(model: nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, kind):
                setattr(module, method, types.MethodType(replacement, module))

    return patch


# --- seed PR #38074 (JAIS / GPT-2 Conv1D) ------------------------------------------------------


class GPT2NoTranspose(GPT2LMHeadModel):
    def needs_transpose(self, name):
        return False


class GPT2MaskedBiasNotSkipped(GPT2LMHeadModel):
    def is_skipped(self, name):
        # Skips ``attn.bias`` but forgets ``attn.masked_bias``.
        parts = name.split(".")
        if parts[-2:] == ["attn", "bias"]:
            return True
        return self.arch.tie_word_embeddings and name.startswith("lm_head.")


class GPT2TiedLmHeadNotSkipped(GPT2LMHeadModel):
    """JAIS's loader as first written: a parameter dict without aliases and no lm_head skip."""

    def load_weights(self, weights):
        params_dict = dict(self.named_parameters())
        loaded = set()
        for name, w in weights:
            name = self.normalize_name(name)
            if ".attn.bias" in name or ".attn.masked_bias" in name:
                continue
            if self.is_on_other_rank(name):
                continue
            param = params_dict[name]  # KeyError: 'lm_head.weight' when tied
            if any(c in name for c in CONV1D_MODULES) and name.endswith(".weight"):
                w = w.t()
            param.weight_loader(param, w)
            loaded.add(name)
        return loaded


# --- tensor-parallel slicing --------------------------------------------------------------------


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


# --- order dependence ---------------------------------------------------------------------------


class LlamaShardsInArrivalOrder(LlamaForCausalLM):
    """gate_up_proj shards placed in the order they arrive, not by shard id.

    Right whenever gate_proj precedes up_proj, as it does in any name-sorted checkpoint.
    """

    def load_weights(self, weights):
        arrived: dict[str, int] = {}

        def reorder(stream):
            for name, w in stream:
                if name.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight")):
                    layer = name.rsplit(".", 2)[0]
                    slot = arrived.setdefault(layer, 0)
                    arrived[layer] += 1
                    name = f"{layer}.{'gate_proj' if slot == 0 else 'up_proj'}.weight"
                yield name, w

        return super().load_weights(reorder(weights))


# --- tracking -----------------------------------------------------------------------------------


class LlamaTrackedOnAnyShard(LlamaForCausalLM):
    """vLLM's own rule: a stacked parameter is 'loaded' as soon as one shard is written."""

    def load_weights(self, weights):
        loaded = set()
        for name, w in weights:
            if self.is_skipped(name) or self.is_on_other_rank(name):
                continue
            target, shard_id = self.stacked_target(name)
            target = self.lora_base_name(target)
            param = dict(self.named_parameters())[target]
            if shard_id is None:
                param.weight_loader(param, w)
            else:
                param.weight_loader(param, w, shard_id)
            loaded.add(target)
        return loaded


class LlamaTracksCheckpointNames(LlamaForCausalLM):
    """Adds the checkpoint name, not the mapped runtime name, to the loaded set."""

    def load_weights(self, weights):
        weights = list(weights)
        super().load_weights(weights)
        return {n for n, _ in weights if not self.is_skipped(n)}


class PerFileLoader(ReferenceLoader):
    """Calls ``load_weights`` once per file and unions the results, as a loader that re-enters
    per consecutive group (vLLM's AutoWeightsLoader) does; the shard record does not survive."""

    name = "mutant per-file tracking"

    def load(self, model, checkpoint):
        from safetensors import safe_open

        from weightcheck.checkpoint import stored_order

        loaded = set()
        for file in checkpoint.files():
            with safe_open(str(file), framework="pt") as f:
                loaded |= model.load_weights((n, f.get_tensor(n)) for n in stored_order(file))
        return loaded


class DoesNothingLoader(ReferenceLoader):
    name = "mutant load does nothing"

    def load(self, model, checkpoint):
        return None


class WritesCacheLoader(ReferenceLoader):
    """Leaves a converted-weights cache next to the checkpoint it read."""

    name = "mutant writes into the checkpoint"

    def load(self, model, checkpoint):
        loaded = super().load(model, checkpoint)
        (checkpoint.path / "converted.cache").write_bytes(b"cache")
        return loaded


# --- MoE, EP, LoRA, PP (issue 3) ------------------------------------------------------------------


def _kwargs_dropped_by_weight_source(model):
    """Seed #42716: a weight source (runai streamer) forwards shard_id/expert_id positionally to
    a loader that reads keywords, so they are dropped."""

    def shim(module, orig):
        def reads_keywords(param, w, name, *_dropped, shard_id=None, expert_id=None, return_success=False):
            return orig(param, w, name, shard_id=shard_id, expert_id=expert_id, return_success=return_success)

        def forwards_positionally(param, w, name, *, shard_id, expert_id, return_success=False):
            return reads_keywords(param, w, name, shard_id, expert_id, return_success)

        return forwards_positionally

    for module in model.modules():
        if isinstance(module, FusedMoE):
            for param in (module.w13_weight, module.w2_weight):
                param.weight_loader = shim(module, param.weight_loader)


class ExpertMappingWithoutBaseLayer(Qwen3MoeForCausalLM):
    """Seed #37114: the expert mapping hard-coded as ``experts.w13_`` misses ``base_layer.``."""

    def expert_params_mapping(self):
        return [(p.replace("base_layer.", ""), w, s, e) for p, w, s, e in super().expert_params_mapping()]


class W13ShardedContiguously(Qwen3MoeForCausalLM):
    """sglang #15432: a fused [gate|up] expert tensor narrowed contiguously by tp rank, instead
    of gate and up each sharded then concatenated (rank 0 gets all of gate at tp 2)."""

    def load_fused_expert_weights(self, tracker, name, target, loaded_weight, shard_ids):
        if shard_ids != ("w1", "w3"):
            return super().load_fused_expert_weights(tracker, name, target, loaded_weight, shard_ids)
        module = self.get_submodule(target.rsplit(".", 1)[0])
        param = tracker.param(target, name)
        rows = param.shape[1]
        start = module.moe_tp_rank * rows
        for expert_id, local in module.expert_map.items():
            param.data[local].copy_(loaded_weight[expert_id, start : start + rows])
        tracker.record(target)


class RouterGateSkipped(Qwen3MoeForCausalLM):
    """vLLM #36190: a guard against ``gate_proj`` matching ``mlp.gate.weight`` skips the router."""

    def is_skipped(self, name):
        return name.endswith("mlp.gate.weight") or super().is_skipped(name)


def _global_id_as_local(model):
    """sglang #13113: the global expert id used as the local slot, no global->local lookup."""
    for module in model.modules():
        if isinstance(module, FusedMoE):
            module.expert_map = {e: e for e in range(len(module.expert_map))}


def _remainder_on_last_rank(model):
    """vLLM #21497: the old linear split, all remainder experts on the last ep rank, while the
    expert map (here: the suite) expects the remainder on the first ranks."""
    for module in model.modules():
        if isinstance(module, FusedMoE) and module.ep_size > 1:
            base, extra = divmod(module.num_experts, module.ep_size)
            k = module.ep_rank
            balanced = tuple(range(k * base + min(k, extra), (k + 1) * base + min(k + 1, extra)))
            if tuple(module.local_expert_ids) != balanced:
                continue  # round robin: not this bug
            start = k * base
            stop = module.num_experts if k == module.ep_size - 1 else start + base
            if stop - start == len(module.expert_map):
                module.expert_map = {e: j for j, e in enumerate(range(start, stop))}


class LlamaReloadIgnoresBaseLayer(LlamaForCausalLM):
    """vLLM #39934: after LoRA wrapping, load_weights looks up the unwrapped names
    (``qkv_proj.weight``), which no longer exist (``qkv_proj.base_layer.weight``)."""

    def lora_base_name(self, name):
        return name


class LlamaTiedEmbeddingAsLayerZero(LlamaForCausalLM):
    """sglang #15890: ``model.embed_tokens.weight`` treated as layer 0, so the last pp rank
    (which needs it for the tied lm_head) skips it."""

    def is_on_other_rank(self, name):
        if name == "model.embed_tokens.weight":
            return 0 not in self.placement.layers
        return super().is_on_other_rank(name)


class RouterWithoutPPGuard(Qwen3MoeForCausalLM):
    """vLLM #50961: one load path (the router) indexes the parameter dict without the
    pipeline-parallel guard, so a rank without that layer fails."""

    def is_on_other_rank(self, name):
        return False if name.endswith("mlp.gate.weight") else super().is_on_other_rank(name)


class ExpertsTrackedOnAnyAttempt(Qwen3MoeForCausalLM):
    """vLLM #42804 (review of #40931): the expert parameter added to loaded_params whatever the
    weight loader returned, so a missing local expert still reads as loaded."""

    def load_weights(self, weights):
        weights = list(weights)
        loaded = super().load_weights(weights)
        for name, _ in weights:
            if ".experts." in name and not self.is_on_other_rank(name):
                prefix = name.split(".experts.")[0]
                experts = "experts.base_layer." if self.arch.lora_wraps("experts") else "experts."
                loaded |= {f"{prefix}.{experts}w13_weight", f"{prefix}.{experts}w2_weight"}
        return loaded


MUTANTS = [
    Mutant(
        "conv1d_not_transposed",
        "GPT-2 Conv1D weights ([in, out]) loaded without the transpose",
        "vLLM PR #38074 (JAIS AutoWeightsLoader)",
        "roundtrip",
        ("gpt2",),
        MutantLoader("conv1d_not_transposed", {"gpt2": GPT2NoTranspose}),
        "c_",
    ),
    Mutant(
        "tied_lm_head_not_skipped",
        "with tied embeddings, the checkpoint's redundant lm_head.weight is looked up (KeyError)",
        "vLLM PR #38074 (JAIS: skip_prefixes=['lm_head.'] when tied)",
        "roundtrip",
        ("gpt2",),
        MutantLoader("tied_lm_head_not_skipped", {"gpt2": GPT2TiedLmHeadNotSkipped}),
        "KeyError: 'lm_head.weight'",
    ),
    Mutant(
        "masked_bias_not_skipped",
        "the .attn.masked_bias mask buffer is not skipped",
        "vLLM PR #38074 (JAIS)",
        "roundtrip",
        ("gpt2",),
        MutantLoader("masked_bias_not_skipped", {"gpt2": GPT2MaskedBiasNotSkipped}),
        "masked_bias",
    ),
    Mutant(
        "load_does_nothing",
        "load() returns without loading anything (and without tracking)",
        "the baseline every value property must reject",
        "roundtrip",
        ("llama", "gpt2"),
        DoesNothingLoader(),
        "never written",
    ),
    Mutant(
        "gqa_kv_head_modulo",
        "with tp_size > num_kv_heads, rank r takes kv head r % nKV instead of r // (T / nKV)",
        "GQA replication (vLLM QKVParallelLinear, docs/runtime-layout.md)",
        "roundtrip",
        ("llama",),
        MutantLoader(
            "gqa_kv_head_modulo", patch=_patch_modules(QKVParallelLinear, "_shard_geometry", _kv_head_modulo)
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
    Mutant(
        "shards_in_arrival_order",
        "gate/up shards placed in arrival order, right only for name-sorted checkpoints",
        "stream-order dependence (vLLM AutoWeightsLoader re-entry, reordered streams)",
        "invariance",
        ("llama",),
        MutantLoader("shards_in_arrival_order", {"llama": LlamaShardsInArrivalOrder}),
        "gate_up_proj",
    ),
    Mutant(
        "tracked_on_any_shard",
        "a fused parameter is reported loaded after one shard (a missing k_proj goes unnoticed)",
        "vLLM load_weights stacked-params tracking",
        "missing_tensor",
        ("llama",),
        MutantLoader("tracked_on_any_shard", {"llama": LlamaTrackedOnAnyShard}),
        "reported as loaded but should not be",
    ),
    Mutant(
        "tracks_checkpoint_names",
        "the loaded set holds checkpoint names instead of runtime parameter names",
        "vLLM track_weights_loading: 'Following weights were not initialized'",
        "tracking",
        ("llama",),
        MutantLoader("tracks_checkpoint_names", {"llama": LlamaTracksCheckpointNames}),
        "q_proj",
    ),
    Mutant(
        "per_file_tracking",
        "tracking restarts per file, so a fused parameter split across files is never reported",
        "vLLM AutoWeightsLoader groups consecutive names and re-enters load_weights",
        "tracking",
        ("llama",),
        PerFileLoader(),
        "loaded from the checkpoint but not reported",
    ),
    Mutant(
        "writes_into_checkpoint",
        "the loader leaves a cache file in the checkpoint directory",
        "loaders that cache converted weights next to the checkpoint",
        "checkpoint_unchanged",
        ("llama", "gpt2"),
        WritesCacheLoader(),
        "converted.cache: added",
    ),
]

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


class ModuleExemptedWholesale(ReferenceLoader):
    """Seed #41086: ``track_weights_loading`` adds every parameter of an exempted module to the
    loaded set; here every module that loaded anything is exempted, so its missing bias is not
    noticed (the seed's exemption applied to quantized modules; the mechanism is the same)."""

    name = "mutant module exempted wholesale"

    def load(self, model, checkpoint):
        loaded = super().load(model, checkpoint)
        for prefix, module in model.named_modules():
            own = {f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)}
            if own & loaded:
                loaded |= own
        return loaded


MOE = ("qwen3_moe",)
MUTANTS += [
    Mutant(
        "moe_kwargs_dropped",
        "shard_id/expert_id forwarded positionally by a weight-source wrapper and dropped",
        "vLLM PR #42716 (Qwen3.5-MTP / Qwen3-VL-MoE with runai streamer)",
        "roundtrip",
        MOE,
        MutantLoader("moe_kwargs_dropped", patch=_kwargs_dropped_by_weight_source),
        "shard None",
    ),
    Mutant(
        "expert_mapping_without_base_layer",
        "expert mapping hard-coded without base_layer., so LoRA-wrapped experts do not load",
        "vLLM PR #37114 (Qwen3.5, Step3 LoRA)",
        "lora_equivalence",
        MOE,
        MutantLoader("expert_mapping_without_base_layer", {"qwen3_moe": ExpertMappingWithoutBaseLayer}),
        "mlp.experts.w",
    ),
    Mutant(
        "w13_sharded_contiguously",
        "fused gate_up expert tensor narrowed contiguously by tp rank instead of per shard",
        "sglang PR #15432 (FusedMoE fused w13 tp sharded loading)",
        "roundtrip",
        MOE,
        MutantLoader("w13_sharded_contiguously", {"qwen3_moe": W13ShardedContiguously}),
        "w13_weight",
    ),
    Mutant(
        "router_gate_skipped",
        "the MoE router mlp.gate.weight is skipped by a guard meant for gate_proj",
        "vLLM PR #36190 (Qwen3.5 false gate_proj match)",
        "roundtrip",
        MOE,
        MutantLoader("router_gate_skipped", {"qwen3_moe": RouterGateSkipped}),
        "mlp.gate.weight",
    ),
    Mutant(
        "global_expert_id_as_local",
        "under EP the global expert id is used as the local slot",
        "sglang PR #13113 (EP MoE: expert ids not on the local rank)",
        "roundtrip",
        MOE,
        MutantLoader("global_expert_id_as_local", patch=_global_id_as_local),
        "ep rank",
    ),
    Mutant(
        "ep_remainder_on_last_rank",
        "linear EP split with the remainder experts on the last rank, not the first",
        "vLLM PR #21497 (more balanced expert sharding)",
        "roundtrip",
        MOE,
        MutantLoader("ep_remainder_on_last_rank", patch=_remainder_on_last_rank),
        "(linear)",
    ),
    Mutant(
        "reload_ignores_base_layer",
        "reloading into a LoRA-wrapped model looks up unwrapped names",
        "vLLM issue #39934 / PR #39935 (sleep/wake reload with enable_lora)",
        "lora_equivalence",
        ("llama",),
        MutantLoader("reload_ignores_base_layer", {"llama": LlamaReloadIgnoresBaseLayer}),
        "matches no parameter",
    ),
    Mutant(
        "tied_embedding_as_layer_zero",
        "under PP the tied embedding is treated as layer 0 and skipped on the last rank",
        "sglang PR #15890 (PP tie_word_embeddings)",
        "roundtrip",
        ("llama",),
        MutantLoader("tied_embedding_as_layer_zero", {"llama": LlamaTiedEmbeddingAsLayerZero}),
        "model.embed_tokens.weight",
    ),
    Mutant(
        "router_without_pp_guard",
        "the router load path lacks the PP-missing-layer guard",
        "vLLM issue #50961 / PR #50962 (GraniteMoeHybrid PP KeyError)",
        "all_ranks",
        MOE,
        MutantLoader("router_without_pp_guard", {"qwen3_moe": RouterWithoutPPGuard}),
        "mlp.gate.weight",
    ),
    Mutant(
        "experts_tracked_on_any_attempt",
        "expert parameters reported loaded whatever the weight loader returned",
        "vLLM PR #42804 / review of #40931 (DeepSeek V4 loaded_params)",
        "missing_tensor",
        MOE,
        MutantLoader("experts_tracked_on_any_attempt", {"qwen3_moe": ExpertsTrackedOnAnyAttempt}),
        "reported as loaded but should not be",
    ),
]

MUTANTS.append(
    Mutant(
        "module_exempted_wholesale",
        "every parameter of a module that loaded anything counts as loaded (a missing bias hides)",
        "vLLM PR #41086 (track_weights_loading over-broad quantized-module exemption)",
        "missing_tensor",
        ("llama",),
        ModuleExemptedWholesale(),
        "reported as loaded but should not be",
    )
)
MUTANTS.append(
    Mutant(
        "loads_each_parameter_once",
        "a second load skips parameters already initialised (weight sync does nothing)",
        "transformers _is_hf_initialized / RL weight-sync reloads",
        "reload",
        ("llama", "qwen2_moe"),
        LoadsEachParameterOnce(),
        "reload",
    )
)


# --- FP8 quantisation, seeds PR #41086 (FP8 half) and PR #42944 ----------------------------------

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


MUTANTS += [
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

BY_NAME = {m.name: m for m in MUTANTS}

# Mutant loaders by name, for --loader=weightcheck.reference_models.mutants:NAME_loader (the mutation matrix, tests).
conv1d_loader = BY_NAME["conv1d_not_transposed"].loader
