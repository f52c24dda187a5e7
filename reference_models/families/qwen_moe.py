"""``qwen3_moe`` and ``qwen2_moe``: llama attention with mixture-of-experts MLPs.

Both come in two checkpoint formats: per-expert HF names (``mlp.experts.{e}.gate_proj.weight``)
and the transformers-v5 fused 3-D form (``mlp.experts.gate_up_proj`` [E, 2Im, H],
``mlp.experts.down_proj`` [E, H, Im]).  The runtime state is the same for both.
"""

from __future__ import annotations

from .rules import Experts, Replicated, Source
from .base import TensorSpec, wrapped
from .llama import Llama, dense_mlp_checkpoint, dense_mlp_layout
from .quant import linear_checkpoint, linear_layout

PER_EXPERT, FUSED = "per_expert", "fused_experts"


class QwenMoE(Llama):
    """The MoE block both Qwen types share; subclasses add shared experts and norms."""

    def formats(self, arch):
        return (PER_EXPERT,) if arch.quant else (PER_EXPERT, FUSED)

    def quant_groups(self, arch):
        groups = super().quant_groups(arch)
        if self.shared_expert(arch):
            for i in range(arch.num_layers):
                if arch.moe.is_moe_layer(i):
                    s = f"model.layers.{i}.mlp.shared_expert."
                    groups += [(s + "gate_proj", s + "up_proj"), (s + "down_proj",)]
        return groups

    def shared_expert(self, arch) -> int:
        return 0

    def mlp_checkpoint(self, arch, i, p, fmt):
        moe = arch.moe
        if not moe.is_moe_layer(i):
            return dense_mlp_checkpoint(arch, p + "mlp.", arch.intermediate_size)
        H, E, Im = arch.hidden_size, moe.num_experts, moe.moe_intermediate_size
        m = p + "mlp."
        out = {m + "gate.weight": TensorSpec((E, H))}
        if fmt == FUSED:
            out[m + "experts.gate_up_proj"] = TensorSpec((E, 2 * Im, H))
            out[m + "experts.down_proj"] = TensorSpec((E, H, Im))
        else:
            for e in range(E):
                x = m + f"experts.{e}."
                out |= linear_checkpoint(arch, x + "gate_proj", (Im, H))
                out |= linear_checkpoint(arch, x + "up_proj", (Im, H), input_scale_of=x + "gate_proj")
                out |= linear_checkpoint(arch, x + "down_proj", (H, Im))
        if self.shared_expert(arch):
            out |= dense_mlp_checkpoint(arch, m + "shared_expert.", self.shared_expert(arch))
            out[m + "shared_expert_gate.weight"] = TensorSpec((1, H))
        return out

    def mlp_layout(self, arch, i, p, fmt):
        moe = arch.moe
        m = p + "mlp."
        if not moe.is_moe_layer(i):
            return dense_mlp_layout(arch, m)
        E, Im = moe.num_experts, moe.moe_intermediate_size
        if fmt == FUSED:
            gate_up, down = m + "experts.gate_up_proj", m + "experts.down_proj"
            w13 = tuple(
                (
                    ("w1 (gate)", Source(gate_up, select=e, rows=(0, Im))),
                    ("w3 (up)", Source(gate_up, select=e, rows=(Im, 2 * Im))),
                )
                for e in range(E)
            )
            w2 = tuple((("w2 (down)", Source(down, select=e)),) for e in range(E))
        else:
            x = m + "experts."
            w13 = tuple(
                (
                    ("w1 (gate)", Source(x + f"{e}.gate_proj.weight")),
                    ("w3 (up)", Source(x + f"{e}.up_proj.weight")),
                )
                for e in range(E)
            )
            w2 = tuple((("w2 (down)", Source(x + f"{e}.down_proj.weight")),) for e in range(E))
        modules = tuple(
            f"{m}experts.{e}.{proj}" for e in range(E) for proj in ("gate_proj", "up_proj", "down_proj")
        )
        rules = {m + "gate.weight": Replicated(Source(m + "gate.weight"))}
        for name, rule in (("w13_weight", Experts(w13, dim=0)), ("w2_weight", Experts(w2, dim=1))):
            runtime = wrapped(arch, m + "experts." + name, "experts")
            rules |= linear_layout(arch, runtime, rule, modules, experts=True)
        if self.shared_expert(arch):
            rules |= dense_mlp_layout(arch, m + "shared_expert.")
            rules[m + "shared_expert_gate.weight"] = Replicated(Source(m + "shared_expert_gate.weight"))
        return rules

    def hf_defaults(self, config):
        # Qwen3MoeConfig / Qwen2MoeConfig: mlp_only_layers None -> [], decoder_sparse_step 1,
        # tie_word_embeddings False.
        return {"tie_word_embeddings": False, "mlp_only_layers": [], "decoder_sparse_step": 1}

    def moe_config(self, arch) -> dict:
        moe = arch.moe
        return {
            "num_experts": moe.num_experts,
            "num_experts_per_tok": moe.top_k,
            "moe_intermediate_size": moe.moe_intermediate_size,
            "decoder_sparse_step": 1,
            "mlp_only_layers": list(moe.dense_layers),
            "norm_topk_prob": True,
        }


class Qwen3MoE(QwenMoE):
    model_type = "qwen3_moe"
    architecture = "Qwen3MoeForCausalLM"

    def attention_extras(self, arch, a):
        return {a + "q_norm.weight": TensorSpec((arch.head_dim,)), a + "k_norm.weight": TensorSpec((arch.head_dim,))}

    def config_extras(self, arch):
        return {"head_dim": arch.head_dim, "attention_bias": arch.attention_bias, **self.moe_config(arch)}

    def hf_defaults(self, config):
        # Qwen3MoeConfig has no head_dim field: Qwen3MoeAttention takes
        # getattr(config, "head_dim", hidden_size // num_attention_heads).  attention_bias False.
        return {
            **super().hf_defaults(config),
            "head_dim": config["hidden_size"] // config["num_attention_heads"],
            "attention_bias": False,
        }


class Qwen2MoE(QwenMoE):
    """q/k/v always biased, o_proj never; head_dim is hidden_size / num_heads; shared expert."""

    model_type = "qwen2_moe"
    architecture = "Qwen2MoeForCausalLM"

    def qkv_bias(self, arch):
        return True

    def o_bias(self, arch):
        return False

    def shared_expert(self, arch):
        return arch.moe.shared_expert_intermediate_size

    def hf_defaults(self, config):
        # Qwen2MoeConfig.qkv_bias defaults to True (real Qwen1.5-MoE configs do not write it);
        # head_dim is never written (Qwen2-MoE derives it as hidden_size // num_attention_heads).
        return {**super().hf_defaults(config), "qkv_bias": True}

    def config_extras(self, arch):
        return {
            "qkv_bias": True,
            "shared_expert_intermediate_size": arch.moe.shared_expert_intermediate_size,
            **self.moe_config(arch),
        }


QWEN3_MOE = Qwen3MoE()
QWEN2_MOE = Qwen2MoE()
