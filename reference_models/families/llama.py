"""``llama``: dense decoder with GQA and optional attention bias (HF ``LlamaForCausalLM``)."""

from __future__ import annotations

from ..oracle.rules import QKV, Replicated, Sharded, Source, Stacked, VocabParallel
from .base import FamilySpec, TensorSpec

COLUMN, ROW = 0, 1


class Llama(FamilySpec):
    model_type = "llama"

    def checkpoint(self, arch):
        H, I, q, kv = arch.hidden_size, arch.intermediate_size, arch.q_size, arch.kv_size
        out = {"model.embed_tokens.weight": TensorSpec((arch.vocab_size, H))}
        for i in range(arch.num_layers):
            p = f"model.layers.{i}."
            out |= {
                p + "self_attn.q_proj.weight": TensorSpec((q, H)),
                p + "self_attn.k_proj.weight": TensorSpec((kv, H)),
                p + "self_attn.v_proj.weight": TensorSpec((kv, H)),
                p + "self_attn.o_proj.weight": TensorSpec((H, q)),
            }
            if arch.attention_bias:
                out |= {
                    p + "self_attn.q_proj.bias": TensorSpec((q,)),
                    p + "self_attn.k_proj.bias": TensorSpec((kv,)),
                    p + "self_attn.v_proj.bias": TensorSpec((kv,)),
                    p + "self_attn.o_proj.bias": TensorSpec((H,)),
                }
            out |= {
                p + "self_attn.rotary_emb.inv_freq": TensorSpec(
                    (arch.head_dim // 2,), role="buffer", dtype="float32", fill="inv_freq"
                ),
                p + "mlp.gate_proj.weight": TensorSpec((I, H)),
                p + "mlp.up_proj.weight": TensorSpec((I, H)),
                p + "mlp.down_proj.weight": TensorSpec((H, I)),
                p + "input_layernorm.weight": TensorSpec((H,)),
                p + "post_attention_layernorm.weight": TensorSpec((H,)),
            }
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
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": arch.hidden_size,
            "intermediate_size": arch.intermediate_size,
            "num_hidden_layers": arch.num_layers,
            "num_attention_heads": arch.num_heads,
            "num_key_value_heads": arch.num_kv_heads,
            "head_dim": arch.head_dim,
            "vocab_size": arch.vocab_size,
            "max_position_embeddings": arch.max_position_embeddings,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "attention_bias": arch.attention_bias,
            "mlp_bias": False,
            "tie_word_embeddings": arch.tie_word_embeddings,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "dtype": arch.dtype,
            "torch_dtype": arch.dtype,
        }

    def layout(self, arch, placement):
        def s(name, **kw):
            return Source(name, **kw)

        rules = {}
        if placement.is_first_pp_rank or (placement.is_last_pp_rank and arch.tie_word_embeddings):
            rules["model.embed_tokens.weight"] = VocabParallel(s("model.embed_tokens.weight"))
        for i in placement.layers:
            p = f"model.layers.{i}."
            a = p + "self_attn."
            for kind in ("weight", "bias") if arch.attention_bias else ("weight",):
                rules[a + f"qkv_proj.{kind}"] = QKV(
                    tuple((x, s(a + f"{x}_proj.{kind}")) for x in "qkv")
                )
            rules[a + "o_proj.weight"] = Sharded(s(a + "o_proj.weight"), ROW)
            if arch.attention_bias:
                rules[a + "o_proj.bias"] = Replicated(s(a + "o_proj.bias"))
            rules[p + "mlp.gate_up_proj.weight"] = Stacked(
                (("0 (gate)", s(p + "mlp.gate_proj.weight")), ("1 (up)", s(p + "mlp.up_proj.weight")))
            )
            rules[p + "mlp.down_proj.weight"] = Sharded(s(p + "mlp.down_proj.weight"), ROW)
            for norm in ("input_layernorm", "post_attention_layernorm"):
                rules[p + f"{norm}.weight"] = Replicated(s(p + f"{norm}.weight"))
        if placement.is_last_pp_rank:
            rules["model.norm.weight"] = Replicated(s("model.norm.weight"))
            if not arch.tie_word_embeddings:
                rules["lm_head.weight"] = VocabParallel(s("lm_head.weight"))
        return rules


SPEC = Llama()
