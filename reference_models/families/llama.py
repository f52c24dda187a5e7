"""``llama``: dense decoder with GQA and optional attention bias (HF ``LlamaForCausalLM``).

``Llama`` is also the base of the other decoder families (the Qwen MoE types): they override
the attention extras, the MLP, and the config, and inherit embedding, norms, PP placement
and LoRA naming.
"""

from __future__ import annotations

from ..oracle.rules import QKV, Replicated, Sharded, Source, Stacked, VocabParallel
from .base import FamilySpec, TensorSpec, wrapped

COLUMN, ROW = 0, 1


class Llama(FamilySpec):
    model_type = "llama"
    architecture = "LlamaForCausalLM"

    # -- per-family knobs ------------------------------------------------------------------

    def qkv_bias(self, arch) -> bool:
        return arch.attention_bias

    def o_bias(self, arch) -> bool:
        return arch.attention_bias

    def attention_extras(self, arch, p: str) -> dict[str, TensorSpec]:
        """Per-layer attention tensors beyond q/k/v/o (e.g. Qwen3's q_norm/k_norm)."""
        return {}

    def mlp_checkpoint(self, arch, i: int, p: str, fmt: str) -> dict[str, TensorSpec]:
        return dense_mlp_checkpoint(arch, p + "mlp.", arch.intermediate_size)

    def mlp_layout(self, arch, i: int, p: str, fmt: str) -> dict:
        return dense_mlp_layout(arch, p + "mlp.")

    def config_extras(self, arch) -> dict:
        return {"head_dim": arch.head_dim, "attention_bias": arch.attention_bias, "mlp_bias": False}

    # -- checkpoint ------------------------------------------------------------------------

    def checkpoint(self, arch, fmt="default"):
        H, q, kv = arch.hidden_size, arch.q_size, arch.kv_size
        out = {"model.embed_tokens.weight": TensorSpec((arch.vocab_size, H))}
        for i in range(arch.num_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            out |= {
                a + "q_proj.weight": TensorSpec((q, H)),
                a + "k_proj.weight": TensorSpec((kv, H)),
                a + "v_proj.weight": TensorSpec((kv, H)),
                a + "o_proj.weight": TensorSpec((H, q)),
            }
            if self.qkv_bias(arch):
                out |= {
                    a + "q_proj.bias": TensorSpec((q,)),
                    a + "k_proj.bias": TensorSpec((kv,)),
                    a + "v_proj.bias": TensorSpec((kv,)),
                }
            if self.o_bias(arch):
                out[a + "o_proj.bias"] = TensorSpec((H,))
            out |= self.attention_extras(arch, a)
            out[a + "rotary_emb.inv_freq"] = TensorSpec(
                (arch.head_dim // 2,), role="buffer", dtype="float32", fill="inv_freq"
            )
            out |= self.mlp_checkpoint(arch, i, p, fmt)
            out[p + "input_layernorm.weight"] = TensorSpec((H,))
            out[p + "post_attention_layernorm.weight"] = TensorSpec((H,))
        out["model.norm.weight"] = TensorSpec((H,))
        if arch.tie_word_embeddings:
            out["lm_head.weight"] = TensorSpec(
                (arch.vocab_size, H), role="alias", fill="copy:model.embed_tokens.weight"
            )
        else:
            out["lm_head.weight"] = TensorSpec((arch.vocab_size, H))
        return out

    def config(self, arch):
        return {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "hidden_size": arch.hidden_size,
            "intermediate_size": arch.intermediate_size,
            "num_hidden_layers": arch.num_layers,
            "num_attention_heads": arch.num_heads,
            "num_key_value_heads": arch.num_kv_heads,
            "vocab_size": arch.vocab_size,
            "max_position_embeddings": arch.max_position_embeddings,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "tie_word_embeddings": arch.tie_word_embeddings,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "dtype": arch.dtype,
            "torch_dtype": arch.dtype,
            **self.config_extras(arch),
        }

    # -- runtime layout (the oracle's rules) ---------------------------------------------------

    def layout(self, arch, placement, fmt="default"):
        rules = {}
        if placement.is_first_pp_rank or (placement.is_last_pp_rank and arch.tie_word_embeddings):
            rules["model.embed_tokens.weight"] = VocabParallel(Source("model.embed_tokens.weight"))
        for i in placement.layers:
            p = f"model.layers.{i}."
            a = p + "self_attn."
            kinds = ("weight", "bias") if self.qkv_bias(arch) else ("weight",)
            for kind in kinds:
                rules[wrapped(arch, a + f"qkv_proj.{kind}", "qkv")] = QKV(
                    tuple((x, Source(a + f"{x}_proj.{kind}")) for x in "qkv")
                )
            rules[wrapped(arch, a + "o_proj.weight", "o")] = Sharded(Source(a + "o_proj.weight"), ROW)
            if self.o_bias(arch):
                rules[wrapped(arch, a + "o_proj.bias", "o")] = Replicated(Source(a + "o_proj.bias"))
            for name in self.attention_extras(arch, a):
                rules[name] = Replicated(Source(name))
            rules |= self.mlp_layout(arch, i, p, fmt)
            for norm in ("input_layernorm", "post_attention_layernorm"):
                rules[p + f"{norm}.weight"] = Replicated(Source(p + f"{norm}.weight"))
        if placement.is_last_pp_rank:
            rules["model.norm.weight"] = Replicated(Source("model.norm.weight"))
            if not arch.tie_word_embeddings:
                rules["lm_head.weight"] = VocabParallel(Source("lm_head.weight"))
        return rules


def dense_mlp_checkpoint(arch, m: str, size: int) -> dict[str, TensorSpec]:
    """gate/up/down of a SwiGLU MLP under prefix ``m`` (``...mlp.`` or ``...shared_expert.``)."""
    H = arch.hidden_size
    return {
        m + "gate_proj.weight": TensorSpec((size, H)),
        m + "up_proj.weight": TensorSpec((size, H)),
        m + "down_proj.weight": TensorSpec((H, size)),
    }


def dense_mlp_layout(arch, m: str) -> dict:
    return {
        wrapped(arch, m + "gate_up_proj.weight", "gate_up"): Stacked(
            (("0 (gate)", Source(m + "gate_proj.weight")), ("1 (up)", Source(m + "up_proj.weight")))
        ),
        wrapped(arch, m + "down_proj.weight", "down"): Sharded(Source(m + "down_proj.weight"), ROW),
    }


SPEC = Llama()
