"""Hypothesis strategies for architectures, placements, checkpoint recipes and whole cases."""

from .archs import archs, gpt2_archs, llama_archs, qwen2_moe_archs, qwen3_moe_archs
from .cases import cases
from .checkpoints import checkpoint_recipes, layouts, relayouts
from .placements import partitions, placements, pp_sizes, tp_sizes, vllm_default_partition

__all__ = [
    "archs",
    "cases",
    "checkpoint_recipes",
    "gpt2_archs",
    "layouts",
    "llama_archs",
    "qwen2_moe_archs",
    "qwen3_moe_archs",
    "partitions",
    "placements",
    "pp_sizes",
    "vllm_default_partition",
    "relayouts",
    "tp_sizes",
]
