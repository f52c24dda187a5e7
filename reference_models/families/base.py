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
    are always present.  ``fill`` says how values are made (see ``fixtures.values``).
    """

    shape: tuple[int, ...]
    role: Role = "weight"
    dtype: str | None = None  # None: the arch dtype
    fill: str = "random"


class FamilySpec:
    """Base class of the per-family specs; subclasses set ``model_type`` and the three methods."""

    model_type: str = ""

    def checkpoint(self, arch) -> dict[str, TensorSpec]:
        """Every tensor an HF checkpoint of this arch may hold, optional ones included."""
        raise NotImplementedError

    def config(self, arch) -> dict[str, Any]:
        """config.json as HF writes it for this ``model_type``."""
        raise NotImplementedError

    def layout(self, arch, placement) -> dict[str, Any]:
        """Runtime parameter name -> layout rule (``reference_models.oracle.rules``)."""
        raise NotImplementedError
