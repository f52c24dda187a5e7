"""The architecture and placement a loader is asked to build.

These are the public, frozen description of one example: what model to build (``Arch``) and
which slice of it this process owns (``Placement``).  They hold plain values only (dtype as a
string) so that a case can be written to JSON and replayed by an installed suite.  Optional
features (MoE, LoRA, quantisation, expert parallel) are added as new fields with defaults, so a
loader written today keeps working when they arrive.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


EXPERT_PLACEMENTS = ("linear", "round_robin")
LORA_TARGETS = ("qkv", "o", "gate_up", "down", "experts")


@dataclass(frozen=True)
class MoE:
    """Mixture-of-experts MLP settings.

    ``dense_layers``: layers with an ordinary MLP (``mlp_only_layers`` in HF configs).
    ``shared_expert_intermediate_size``: 0 for none; families without shared experts keep 0.
    """

    num_experts: int
    top_k: int
    moe_intermediate_size: int
    shared_expert_intermediate_size: int = 0
    dense_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "dense_layers", tuple(self.dense_layers))
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError("top_k must be between 1 and num_experts")

    def is_moe_layer(self, layer: int) -> bool:
        return layer not in self.dense_layers


@dataclass(frozen=True)
class LoRA:
    """LoRA wrapping: each targeted layer keeps the original as ``base_layer``.

    ``targets`` are layer kinds from ``LORA_TARGETS``; the LoRA A/B tensors are not base weights
    and never part of the canonical state.
    """

    targets: tuple[str, ...]
    rank: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(sorted(self.targets)))
        unknown = set(self.targets) - set(LORA_TARGETS)
        if unknown:
            raise ValueError(f"unknown LoRA targets {sorted(unknown)}; known {LORA_TARGETS}")


@dataclass(frozen=True)
class Arch:
    """A tiny decoder architecture of one real HF ``model_type`` (``family``)."""

    family: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int = 16
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    dtype: str = "float32"
    moe: MoE | None = None
    lora: LoRA | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Arch":
        data = dict(data)
        if data.get("moe") is not None:
            data["moe"] = MoE(**data["moe"])
        if data.get("lora") is not None:
            data["lora"] = LoRA(**data["lora"])
        return cls(**data)

    def lora_wraps(self, target: str) -> bool:
        return self.lora is not None and target in self.lora.targets


@dataclass(frozen=True)
class Placement:
    """This process's share of the model: its tensor-, pipeline- and expert-parallel rank.

    With ``ep_size > 1`` the routed experts are split across expert-parallel ranks
    (``expert_placement`` linear or round robin) and each local expert is held whole, not
    tensor-parallel sharded (vLLM's rule: under EP the MoE layer's own tp size is 1).

    ``layer_partition`` is explicit (layers per pipeline rank, summing to ``num_layers``) so a
    case never depends on an engine's default partitioning rule.
    """

    layer_partition: tuple[int, ...]
    tp_size: int = 1
    tp_rank: int = 0
    pp_size: int = 1
    pp_rank: int = 0
    ep_size: int = 1
    ep_rank: int = 0
    expert_placement: str = "linear"
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_partition", tuple(self.layer_partition))
        if not 0 <= self.tp_rank < self.tp_size:
            raise ValueError(f"tp_rank {self.tp_rank} outside tp_size {self.tp_size}")
        if not 0 <= self.pp_rank < self.pp_size:
            raise ValueError(f"pp_rank {self.pp_rank} outside pp_size {self.pp_size}")
        if len(self.layer_partition) != self.pp_size:
            raise ValueError("layer_partition needs one entry per pipeline rank")
        if not 0 <= self.ep_rank < self.ep_size:
            raise ValueError(f"ep_rank {self.ep_rank} outside ep_size {self.ep_size}")
        if self.expert_placement not in EXPERT_PLACEMENTS:
            raise ValueError(f"expert_placement must be one of {EXPERT_PLACEMENTS}")

    @classmethod
    def single(cls, arch: Arch, tp_size: int = 1, tp_rank: int = 0) -> "Placement":
        return cls(layer_partition=(arch.num_layers,), tp_size=tp_size, tp_rank=tp_rank)

    @property
    def layers(self) -> range:
        """The global indices of the decoder layers this rank builds."""
        start = sum(self.layer_partition[: self.pp_rank])
        return range(start, start + self.layer_partition[self.pp_rank])

    @property
    def is_first_pp_rank(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_pp_rank(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Placement":
        return cls(**data)
