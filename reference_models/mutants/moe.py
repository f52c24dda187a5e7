"""Mixture-of-experts and expert-parallel loading (seed PR #42716, SGLang and vLLM MoE bugs)."""

from __future__ import annotations

from weightcheck.reference_models.reference_loader.moe import FusedMoE
from weightcheck.reference_models.reference_loader.qwen3_moe import Qwen3MoeForCausalLM

from .base import Mutant, MutantLoader

MOE = ("qwen3_moe",)


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
        "moe_kwargs_dropped",
        "shard_id/expert_id forwarded positionally by a weight-source wrapper and dropped",
        "vLLM PR #42716 (Qwen3.5-MTP / Qwen3-VL-MoE with runai streamer)",
        "roundtrip",
        MOE,
        MutantLoader("moe_kwargs_dropped", patch=_kwargs_dropped_by_weight_source),
        "shard None",
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
        "experts_tracked_on_any_attempt",
        "expert parameters reported loaded whatever the weight loader returned",
        "vLLM PR #42804 / review of #40931 (DeepSeek V4 loaded_params)",
        "missing_tensor",
        MOE,
        MutantLoader("experts_tracked_on_any_attempt", {"qwen3_moe": ExpertsTrackedOnAnyAttempt}),
        "reported as loaded but should not be",
    ),
]
