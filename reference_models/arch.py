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
        return cls(**data)


@dataclass(frozen=True)
class Placement:
    """This process's share of the model: its tensor- and pipeline-parallel rank.

    ``layer_partition`` is explicit (layers per pipeline rank, summing to ``num_layers``) so a
    case never depends on an engine's default partitioning rule.
    """

    layer_partition: tuple[int, ...]
    tp_size: int = 1
    tp_rank: int = 0
    pp_size: int = 1
    pp_rank: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_partition", tuple(self.layer_partition))
        if not 0 <= self.tp_rank < self.tp_size:
            raise ValueError(f"tp_rank {self.tp_rank} outside tp_size {self.tp_size}")
        if not 0 <= self.pp_rank < self.pp_size:
            raise ValueError(f"pp_rank {self.pp_rank} outside pp_size {self.pp_size}")
        if len(self.layer_partition) != self.pp_size:
            raise ValueError("layer_partition needs one entry per pipeline rank")

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
