"""LoRA wrapping: base_layer names (seed PR #37114, vLLM #39934)."""

from __future__ import annotations

from weightcheck.reference_models.reference_loader.llama import LlamaForCausalLM
from weightcheck.reference_models.reference_loader.qwen3_moe import Qwen3MoeForCausalLM

from .base import Mutant, MutantLoader

MOE = ("qwen3_moe",)


class ExpertMappingWithoutBaseLayer(Qwen3MoeForCausalLM):
    """Seed #37114: the expert mapping hard-coded as ``experts.w13_`` misses ``base_layer.``."""

    def expert_params_mapping(self):
        return [(p.replace("base_layer.", ""), w, s, e) for p, w, s, e in super().expert_params_mapping()]


class LlamaReloadIgnoresBaseLayer(LlamaForCausalLM):
    """vLLM #39934: after LoRA wrapping, load_weights looks up the unwrapped names
    (``qkv_proj.weight``), which no longer exist (``qkv_proj.base_layer.weight``)."""

    def lora_base_name(self, name):
        return name


MUTANTS = [
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
        "reload_ignores_base_layer",
        "reloading into a LoRA-wrapped model looks up unwrapped names",
        "vLLM issue #39934 / PR #39935 (sleep/wake reload with enable_lora)",
        "lora_equivalence",
        ("llama",),
        MutantLoader("reload_ignores_base_layer", {"llama": LlamaReloadIgnoresBaseLayer}),
        "matches no parameter",
    ),
]
