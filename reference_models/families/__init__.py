"""The architecture families the suite knows, by HF ``model_type``."""

from .base import FamilySpec, TensorSpec
from .gpt2 import SPEC as GPT2
from .llama import SPEC as LLAMA
from .qwen_moe import QWEN2_MOE, QWEN3_MOE

FAMILY_SPECS: dict[str, FamilySpec] = {
    spec.model_type: spec for spec in (LLAMA, GPT2, QWEN3_MOE, QWEN2_MOE)
}


def family_spec(name: str) -> FamilySpec:
    try:
        return FAMILY_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; known: {sorted(FAMILY_SPECS)}") from None


__all__ = ["FAMILY_SPECS", "FamilySpec", "TensorSpec", "family_spec"]
