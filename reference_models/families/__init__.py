"""Family specs: each family's checkpoint tensors, config.json and the oracle's layout rules.

Which spec belongs to which family is said once, in ``weightcheck.families``.
"""

import functools
from types import MappingProxyType
from typing import Mapping

from weightcheck.families import family, resolve

from .base import FamilySpec, TensorSpec


@functools.lru_cache(maxsize=512)
def checkpoint_specs(arch, fmt: str = "default") -> Mapping[str, TensorSpec]:
    """The family's checkpoint tensors for ``arch``, built once per (arch, format).

    Every step of an example (features, values, writing, the oracle) asks for them; Arch is
    frozen and hashable, and callers must not mutate the returned mapping.
    """
    return MappingProxyType(family_spec(arch.family).checkpoint(arch, fmt))


def family_spec(name: str) -> FamilySpec:
    """The spec the family registry (``weightcheck.families``) names for ``name``."""
    return resolve(family(name).spec)


def hf_config(arch) -> dict:
    """The config.json dict the suite writes for ``arch`` (a fresh dict), optional fields left
    out as ``arch.config_omits`` says: for adapters that build their model from config.json.
    Public as ``weightcheck.hf_config``."""
    return family_spec(arch.family).config(arch)


__all__ = ["FamilySpec", "TensorSpec", "checkpoint_specs", "family_spec", "hf_config"]
