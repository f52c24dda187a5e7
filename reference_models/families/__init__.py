"""The architecture families the suite knows, by HF ``model_type``."""

import functools
from types import MappingProxyType
from typing import Mapping

from .base import FamilySpec, TensorSpec
from .deepseek import SPEC as DEEPSEEK_V32
from .gpt2 import SPEC as GPT2
from .llama import SPEC as LLAMA
from .qwen_moe import QWEN2_MOE, QWEN3_MOE

FAMILY_SPECS: dict[str, FamilySpec] = {
    spec.model_type: spec for spec in (LLAMA, GPT2, QWEN3_MOE, QWEN2_MOE, DEEPSEEK_V32)
}


@functools.lru_cache(maxsize=512)
def checkpoint_specs(arch, fmt: str = "default") -> Mapping[str, TensorSpec]:
    """The family's checkpoint tensors for ``arch``, built once per (arch, format).

    Every step of an example (features, values, writing, the oracle) asks for them; Arch is
    frozen and hashable, and callers must not mutate the returned mapping.
    """
    return MappingProxyType(family_spec(arch.family).checkpoint(arch, fmt))


def family_spec(name: str) -> FamilySpec:
    try:
        return FAMILY_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; known: {sorted(FAMILY_SPECS)}") from None


__all__ = ["FAMILY_SPECS", "FamilySpec", "TensorSpec", "checkpoint_specs", "family_spec"]
