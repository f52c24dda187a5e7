"""What a family spec provides: checkpoint tensors, config.json, and the oracle's layout rules.

A new architecture family is one module here (plus one strategy in ``strategies/``): the oracle,
the checkpoint writer and the properties are driven by these three methods.  The reference
loader does not read family specs; it has its own model classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["weight", "buffer", "alias"]


@dataclass(frozen=True)
class TensorSpec:
    """One checkpoint tensor.

    ``role``: a ``weight`` feeds runtime parameters; a ``buffer`` is a non-parameter tensor real
    checkpoints carry and loaders must skip (mask buffers, ``rotary_emb.inv_freq``); an
    ``alias`` is a redundant copy (tied ``lm_head.weight``), also to be skipped.  Only weights
    are always present.  ``fill`` says how values are made (see ``weightcheck.fixtures.values``).
    """

    shape: tuple[int, ...]
    role: Role = "weight"
    dtype: str | None = None  # None: the arch dtype
    fill: str = "random"


class FamilySpec:
    """Base class of the per-family specs; subclasses set ``model_type`` and the three methods.

    ``fmt`` names one of ``formats(arch)``: real checkpoints of one architecture come in more
    than one naming (per-expert or fused 3-D experts), and a loader must read them all.
    """

    model_type: str = ""

    def formats(self, arch) -> tuple[str, ...]:
        return ("default",)

    def checkpoint(self, arch, fmt: str = "default") -> dict[str, TensorSpec]:
        """Every tensor an HF checkpoint of this arch may hold, optional ones included."""
        raise NotImplementedError

    def config(self, arch) -> dict[str, Any]:
        """config.json as HF writes it for this ``model_type``."""
        raise NotImplementedError

    def layout(self, arch, placement, fmt: str = "default") -> dict[str, Any]:
        """Runtime parameter name -> layout rule (``weightcheck.reference_models.families.rules``)."""
        raise NotImplementedError


def wrapped(arch, name: str, target: str) -> str:
    """The runtime name under LoRA: ``a.b.weight`` -> ``a.b.base_layer.weight`` if wrapped."""
    if not arch.lora_wraps(target):
        return name
    module, _, param = name.rpartition(".")
    return f"{module}.base_layer.{param}"
