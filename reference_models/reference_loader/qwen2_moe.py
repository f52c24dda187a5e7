"""``qwen2_moe``: ``qwen3_moe``'s loading with Qwen2-MoE's attention and a shared expert.

Attention: q/k/v always carry a bias, ``o_proj`` never (``arch.attention_bias`` plays no part),
no q/k norms, ``head_dim = H / nH``.  Every MoE layer adds a shared expert, a plain gated MLP of
``moe.shared_expert_intermediate_size`` (``mlp.shared_expert.{gate_up_proj,down_proj}``, TP-sharded
like a dense MLP), and its scalar gate ``mlp.shared_expert_gate.weight`` ``[1, H]`` (replicated).
"""

from __future__ import annotations

from torch import nn

from weightcheck.arch import Arch, Placement
from weightcheck.reference_models.reference_loader.layers import ReplicatedLinear
from weightcheck.reference_models.reference_loader.llama import LlamaAttention, LlamaMLP
from weightcheck.reference_models.reference_loader.qwen3_moe import Qwen3MoeForCausalLM, Qwen3MoeSparseMoeBlock


class Qwen2MoeSparseMoeBlock(Qwen3MoeSparseMoeBlock):
    def __init__(self, arch: Arch, placement: Placement, prefix: str = "") -> None:
        super().__init__(arch, placement, prefix)
        self.shared_expert = LlamaMLP(
            arch, placement, arch.moe.shared_expert_intermediate_size,
            prefix=f"{prefix}.shared_expert",
        )
        self.shared_expert_gate = ReplicatedLinear(
            arch.hidden_size, 1, False, placement, arch.torch_dtype
        )


class Qwen2MoeForCausalLM(Qwen3MoeForCausalLM):
    def check_arch(self, arch: Arch) -> None:
        if arch.moe is None:
            raise ValueError(f"family {arch.family!r} needs arch.moe")
        if arch.moe.shared_expert_intermediate_size <= 0:
            raise ValueError(
                "qwen2_moe needs a shared expert (shared_expert_intermediate_size > 0)"
            )
        if arch.hidden_size % arch.num_heads or arch.head_dim != arch.hidden_size // arch.num_heads:
            raise ValueError(
                f"qwen2_moe needs head_dim == hidden_size / num_heads, got {arch.head_dim} with "
                f"{arch.hidden_size} / {arch.num_heads}"
            )

    def make_attention(self, arch: Arch, placement: Placement, prefix: str = "") -> nn.Module:
        return LlamaAttention(
            arch, placement, prefix=prefix, head_dim=arch.hidden_size // arch.num_heads,
            qkv_bias=True, o_bias=False,
        )

    def make_sparse_block(self, arch: Arch, placement: Placement, prefix: str = "") -> nn.Module:
        return Qwen2MoeSparseMoeBlock(arch, placement, prefix)
