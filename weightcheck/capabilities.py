"""What a loader declares it supports: families, features, and the placements it can express.

Examples outside a loader's capabilities are never generated, and the conformance matrix says
what was left out.  Unknown names are an error at start-up, never a silently empty run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from .families import FAMILY_NAMES

FEATURES = (
    "tensor_parallel",
    "pipeline_parallel",
    "expert_parallel",
    "tied_embeddings",
    "attention_bias",
    "lora",
    "sharded_checkpoint",
    "fused_expert_checkpoint",
    "fp8_per_tensor",
    "fp8_block",
    "cuda",
)
# How the loader presents its state, not what it can load: declared, never "unsupported".
STATE_FORMS = ("fp8_dequantized_state",)
# Promises a loader may make, checked where a property can: ``in_place_reload``: a second load
# into a processed model keeps every parameter's storage (``data_ptr``), as weight sync needs.
PROMISES = ("in_place_reload",)


class LoaderSpecError(ValueError):
    """``--loader`` names nothing usable; the message says what is wrong."""


def _names(key: str, value: Any) -> frozenset[str]:
    """A collection of names as a frozenset; a bare string or a non-collection is an error."""
    items = None
    if not isinstance(value, (str, bytes)) and isinstance(value, Iterable):
        items = list(value)
    if items is None or not all(isinstance(item, str) for item in items):
        raise LoaderSpecError(
            f"capabilities {key} must be a collection of names such as {{'llama'}}, "
            f"not {value!r}"
        )
    return frozenset(items)


@dataclass(frozen=True)
class Capabilities:
    """What a loader supports.  Examples outside it are never generated.

    ``families`` are HF model types (``weightcheck.families``); ``features`` are names from
    ``FEATURES``.  The default is everything.  ``STATE_FORMS`` are not kinds of case but the
    form of the state, declared the same way: ``fp8_dequantized_state`` is for loaders that
    dequantise FP8 checkpoints at load (transformers on CPU): their FP8 weights are compared
    with the dequantisation definition in the model dtype, and they have no scale parameters.

    ``PROMISES`` are declared the same way: ``in_place_reload`` makes the reload-after-processing
    property also require that every parameter keeps its storage.

    ``placements``: for engines that cannot express every rank of every (tp, pp, ep) grid, a
    function of a ``Placement`` and the ``Arch`` returning None when the engine can hold that
    rank of that model, else the reason it cannot (e.g. vLLM's expert-parallel group is DP x TP,
    so ``ep_rank % tp_size`` must equal ``tp_rank``; vLLM's Qwen MoE refuses a tp size larger
    than its expert count).  Only supported placements are drawn, and all-rank properties
    load only the supported ranks of a world.
    """

    families: frozenset[str] = field(default_factory=lambda: frozenset(FAMILY_NAMES))
    features: frozenset[str] = field(default_factory=lambda: frozenset(FEATURES))
    placements: Callable[[Any, Any], str | None] | None = None

    def __post_init__(self) -> None:
        for key in ("families", "features"):
            object.__setattr__(self, key, _names(key, getattr(self, key)))
        known = set(FEATURES) | set(STATE_FORMS) | set(PROMISES)
        unknown = sorted(self.families - set(FAMILY_NAMES)) + sorted(self.features - known)
        if unknown:
            raise LoaderSpecError(
                f"capabilities name unknown families or features {unknown}; "
                f"known families: {list(FAMILY_NAMES)}, features: {list(FEATURES + STATE_FORMS + PROMISES)}"
            )
        if self.placements is not None and not callable(self.placements):
            raise LoaderSpecError(
                f"capabilities placements must be a function of a Placement, not {self.placements!r}"
            )

    @classmethod
    def coerce(cls, value: Any) -> "Capabilities":
        if value is None:
            return cls()
        if isinstance(value, Capabilities):
            return value
        if isinstance(value, Mapping):
            extra = set(value) - {"families", "features", "placements"}
            if extra:
                raise LoaderSpecError(f"capabilities has unknown keys {sorted(extra)}")
            return cls(**value)
        raise LoaderSpecError(
            f"capabilities must be a Capabilities or a mapping, not {type(value).__name__}"
        )

    def supports(self, feature: str) -> bool:
        return feature in self.features

    def placement_reason(self, placement, arch) -> str | None:
        """Why the loader cannot hold ``placement`` of ``arch`` (None: it can)."""
        return None if self.placements is None else self.placements(placement, arch)
