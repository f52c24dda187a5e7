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
# Runtime and checkpoint dtypes beyond the model dtypes: FP8 weights and their float32 scales.
TENSOR_DTYPES = {**DTYPES, "float8_e4m3fn": torch.float8_e4m3fn}


EXPERT_PLACEMENTS = ("linear", "round_robin")
LORA_TARGETS = ("qkv", "o", "gate_up", "down", "experts")
QUANT_METHODS = ("fp8_per_tensor", "fp8_block")
ACTIVATION_SCHEMES = ("dynamic", "static")
IGNORE_KEYS = ("ignored_layers", "modules_to_not_convert")


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
class Quant:
    """FP8 quantisation of the linear layers, as ``quantization_config {"quant_method": "fp8"}``.

    ``method``: ``fp8_per_tensor`` (one ``weight_scale`` per checkpoint weight, plus an
    ``input_scale`` when ``activation_scheme`` is ``static``) or ``fp8_block``
    (``weight_scale_inv`` per ``block`` = (rows, columns) of the weight; activations dynamic).
    ``ignored``: checkpoint module names left in high precision (no scales), written to
    config.json under ``ignore_key`` (vLLM's ``ignored_layers`` or HF's
    ``modules_to_not_convert``).  A fused runtime layer is ignored whole: all of q/k/v, or
    gate and up, are listed together.
    """

    method: str
    activation_scheme: str = "dynamic"
    block: tuple[int, int] | None = None
    ignored: tuple[str, ...] = ()
    ignore_key: str = "ignored_layers"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignored", tuple(sorted(self.ignored)))
        if self.block is not None:
            object.__setattr__(self, "block", tuple(self.block))
        if self.method not in QUANT_METHODS:
            raise ValueError(f"quant method {self.method!r} is not one of {QUANT_METHODS}")
        if self.activation_scheme not in ACTIVATION_SCHEMES:
            raise ValueError(f"activation_scheme must be one of {ACTIVATION_SCHEMES}")
        if self.ignore_key not in IGNORE_KEYS:
            raise ValueError(f"ignore_key must be one of {IGNORE_KEYS}")
        if (self.method == "fp8_block") != (self.block is not None):
            raise ValueError("fp8_block needs a block (rows, columns); fp8_per_tensor none")
        if self.block is not None and (len(self.block) != 2 or min(self.block) < 1):
            raise ValueError(f"block must be two positive sizes, not {self.block}")
        if self.method == "fp8_block" and self.activation_scheme != "dynamic":
            raise ValueError("block-wise FP8 has dynamic activations only (as in vLLM)")

    def quantizes(self, module: str) -> bool:
        """Whether checkpoint module ``module`` (e.g. ``model.layers.0.mlp.down_proj``) is FP8."""
        return module not in self.ignored


@dataclass(frozen=True)
class MLA:
    """Multi-head latent attention and the sparse-attention indexer (DeepSeek-V3.2 / GLM-5).

    Only what loading sees: the projection shapes.  ``q_lora_rank`` is always set (the
    ``fused_qkv_a_proj`` path); the indexer has ``index_n_heads`` heads of ``index_head_dim``.
    """

    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    index_n_heads: int
    index_head_dim: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


@dataclass(frozen=True)
class Arch:
    """A tiny decoder architecture of one real HF ``model_type`` (``family``).

    ``config_omits``: optional ``config.json`` fields this example's config leaves out (or, for
    GPT-2's ``n_inner``, writes as ``null``), as real checkpoints do; each one only where its
    value is what the model type's HF config class assumes when it is absent (the family spec
    says which fields may be omitted for an arch, ``FamilySpec.omittable``).  Default: nothing
    omitted.  The config an arch describes is ``weightcheck.hf_config(arch)``.
    """

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
    quant: Quant | None = None
    mla: MLA | None = None
    config_omits: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "config_omits", tuple(sorted(set(self.config_omits))))
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
        if data.get("quant") is not None:
            data["quant"] = Quant(**data["quant"])
        if data.get("mla") is not None:
            data["mla"] = MLA(**data["mla"])
        return cls(**data)

    def lora_wraps(self, target: str) -> bool:
        return self.lora is not None and target in self.lora.targets

    def fp8(self, module: str) -> bool:
        """Whether checkpoint module ``module`` is stored in FP8 with scales."""
        return self.quant is not None and self.quant.quantizes(module)


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
