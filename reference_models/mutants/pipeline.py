"""Pipeline-parallel ownership and skipping."""

from __future__ import annotations

from weightcheck.reference_models.reference_loader.llama import LlamaForCausalLM
from weightcheck.reference_models.reference_loader.qwen3_moe import Qwen3MoeForCausalLM

from .base import Mutant, MutantLoader

MOE = ("qwen3_moe",)


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


MUTANTS = [
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
]
