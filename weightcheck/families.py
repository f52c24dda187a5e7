"""The family registry: one entry per architecture family, and everything per family derives
from it (the names ``Capabilities`` accepts, which families get LoRA or FP8 examples, the
checkpoint formats, the family spec, the arch strategy, the reference loader's model class).

A new family is one ``Family`` entry here plus the three things it names: a spec in
``weightcheck.reference_models.families`` (checkpoint tensors, config.json, the oracle's layout
rules), an arch strategy in ``weightcheck.strategies.archs``, and a model class of the reference
loader, with its rows in docs/runtime-layout.md.

The three are named by ``"module:attribute"`` and imported only by whoever needs them: this
module sits at the bottom of the import graph, and the oracle and the reference loader must not
import each other through it (tests/test_structure.py reads the import graph).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

_SPECS = "weightcheck.reference_models.families"
_ARCHS = "weightcheck.strategies.archs"
_MODELS = "weightcheck.reference_models.reference_loader"


@dataclass(frozen=True)
class Family:
    """One architecture family (an HF ``model_type``).

    ``lora_targets``: the layer kinds a LoRA case may wrap (empty: no LoRA cases);
    ``fp8_methods``: the FP8 formats its checkpoints come in (empty: never quantised);
    ``formats``: its checkpoint naming formats (e.g. per-expert and fused 3-D experts).
    ``spec``, ``archs`` and ``reference_model`` are ``"module:attribute"`` references.
    """

    name: str
    lora_targets: tuple[str, ...]
    fp8_methods: tuple[str, ...]
    formats: tuple[str, ...]
    spec: str
    archs: str
    reference_model: str

    @property
    def lora(self) -> bool:
        return bool(self.lora_targets)


DENSE_LORA = ("qkv", "o", "gate_up", "down")
MOE_LORA = DENSE_LORA + ("experts",)
FP8 = ("fp8_per_tensor", "fp8_block")
MOE_FORMATS = ("per_expert", "fused_experts")

FAMILIES: Mapping[str, Family] = MappingProxyType(
    {
        f.name: f
        for f in (
            Family(
                "llama", DENSE_LORA, FP8, ("default",),
                f"{_SPECS}.llama:SPEC", f"{_ARCHS}:llama_archs",
                f"{_MODELS}.llama:LlamaForCausalLM",
            ),
            Family(
                "gpt2", (), (), ("default",),
                f"{_SPECS}.gpt2:SPEC", f"{_ARCHS}:gpt2_archs",
                f"{_MODELS}.gpt2:GPT2LMHeadModel",
            ),
            Family(
                "qwen3_moe", MOE_LORA, FP8, MOE_FORMATS,
                f"{_SPECS}.qwen_moe:QWEN3_MOE", f"{_ARCHS}:qwen3_moe_archs",
                f"{_MODELS}.qwen3_moe:Qwen3MoeForCausalLM",
            ),
            Family(
                "qwen2_moe", MOE_LORA, FP8, MOE_FORMATS,
                f"{_SPECS}.qwen_moe:QWEN2_MOE", f"{_ARCHS}:qwen2_moe_archs",
                f"{_MODELS}.qwen2_moe:Qwen2MoeForCausalLM",
            ),
            Family(
                "deepseek_v32", (), ("fp8_block",), ("default",),
                f"{_SPECS}.deepseek:SPEC", f"{_ARCHS}:deepseek_v32_archs",
                f"{_MODELS}.deepseek_v32:DeepseekV32ForCausalLM",
            ),
        )
    }
)
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; known: {list(FAMILY_NAMES)}") from None


@functools.lru_cache(maxsize=None)
def resolve(reference: str) -> Any:
    """The object a ``"module:attribute"`` reference names (imported on first use)."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)
