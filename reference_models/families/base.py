"""What a family spec provides: checkpoint tensors, config.json, and the oracle's layout rules.

A new architecture family is one module here (plus one strategy in ``strategies/``): the oracle,
the checkpoint writer and the properties are driven by its methods.  The reference loader does
not read family specs; it has its own model classes.

config.json: ``full_config`` writes every field; ``hf_defaults`` says what HF assumes for the
optional ones when they are absent, which decides what an arch may leave out (``omittable``);
``config`` is what the suite writes, without the arch's ``config_omits``.
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
    """Base class of the per-family specs; subclasses set ``model_type`` and the methods
    ``checkpoint``, ``full_config``, ``hf_defaults`` and ``layout``.

    ``fmt`` names one of ``formats(arch)``: real checkpoints of one architecture come in more
    than one naming (per-expert or fused 3-D experts), and a loader must read them all.
    """

    model_type: str = ""
    # Omitted fields written as ``null`` rather than left out (GPT-2's own ``"n_inner": null``).
    nulled: tuple[str, ...] = ()

    def formats(self, arch) -> tuple[str, ...]:
        return ("default",)

    def checkpoint(self, arch, fmt: str = "default") -> dict[str, TensorSpec]:
        """Every tensor an HF checkpoint of this arch may hold, optional ones included."""
        raise NotImplementedError

    def full_config(self, arch) -> dict[str, Any]:
        """config.json as HF writes it for this ``model_type``, every field written."""
        raise NotImplementedError

    def hf_defaults(self, config: dict[str, Any]) -> dict[str, Any]:
        """Optional fields of ``config`` -> the value the model type's HF config class (or its
        model, for a field the class does not define) assumes when the field is absent
        (transformers 5.23; e.g. llama's ``head_dim``: ``hidden_size // num_attention_heads``)."""
        return {}

    def omittable(self, arch) -> tuple[str, ...]:
        """The fields a config.json of ``arch`` may leave out: those whose value is exactly what
        HF assumes without them (``hf_defaults``), so the config means the same either way."""
        full = self.full_config(arch)
        return tuple(
            sorted(k for k, v in self.hf_defaults(full).items() if k in full and _same(full[k], v))
        )

    def config(self, arch) -> dict[str, Any]:
        """config.json as written for ``arch``: ``full_config`` without ``arch.config_omits``
        (written ``null`` where the family's real configs do: ``nulled``)."""
        config = self.full_config(arch)
        if not arch.config_omits:
            return config
        bad = sorted(set(arch.config_omits) - set(self.omittable(arch)))
        if bad:
            raise ValueError(
                f"{self.model_type}: config_omits {bad} cannot be left out of this arch's config: "
                f"their values differ from what HF assumes without them (omittable: "
                f"{list(self.omittable(arch))})"
            )
        for key in arch.config_omits:
            if key in self.nulled:
                config[key] = None
            else:
                del config[key]
        return config

    def kept_in_float32(self, arch) -> frozenset[str]:
        """Runtime parameters the model's own code keeps in float32 whatever the model dtype
        (DeepSeek-V3.2's indexer: transformers' ``_keep_in_fp32_modules``, vLLM's float32
        ``k_norm``): an engine may hold them in float32, as the exact cast of the value its
        rule gives (docs/runtime-layout.md), or in the model dtype."""
        return frozenset()

    def layout(self, arch, placement, fmt: str = "default") -> dict[str, Any]:
        """Runtime parameter name -> layout rule (``weightcheck.reference_models.families.rules``)."""
        raise NotImplementedError


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: ``False`` is not ``0``, ``1`` is not ``True``."""
    return type(a) is type(b) and a == b


def wrapped(arch, name: str, target: str) -> str:
    """The runtime name under LoRA: ``a.b.weight`` -> ``a.b.base_layer.weight`` if wrapped."""
    if not arch.lora_wraps(target):
        return name
    module, _, param = name.rpartition(".")
    return f"{module}.base_layer.{param}"
