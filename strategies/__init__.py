"""Hypothesis strategies for architectures, placements, checkpoint recipes and whole cases."""

from .archs import ARCH_STRATEGIES, gpt2_archs, llama_archs
from .cases import cases
from .checkpoints import checkpoint_recipes, layouts, relayouts
from .placements import placements, tp_sizes

__all__ = [
    "ARCH_STRATEGIES",
    "cases",
    "checkpoint_recipes",
    "gpt2_archs",
    "layouts",
    "llama_archs",
    "placements",
    "relayouts",
    "tp_sizes",
]
