"""``llama``: dense decoder with GQA and optional attention bias (HF ``LlamaForCausalLM``).

``Llama`` is also the base of the other decoder families (the Qwen MoE types): they override
the attention extras, the MLP, and the config, and inherit embedding, norms, PP placement
and LoRA naming.
"""

from __future__ import annotations

from .rules import QKV, Replicated, Sharded, Source, Stacked, VocabParallel
from .base import FamilySpec, TensorSpec, wrapped
from .quant import linear_checkpoint, linear_layout, quantization_config

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
        H = arch.hidden_size
        out = {"model.embed_tokens.weight": TensorSpec((arch.vocab_size, H))}
        for i in range(arch.num_layers):
            p = f"model.layers.{i}."
            out |= self.attention_checkpoint(arch, p + "self_attn.")
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

    def attention_checkpoint(self, arch, a: str) -> dict[str, TensorSpec]:
        H, q, kv = arch.hidden_size, arch.q_size, arch.kv_size
        bias = self.qkv_bias(arch)
        out = {}
        for x, rows in (("q", q), ("k", kv), ("v", kv)):
            out |= linear_checkpoint(arch, a + f"{x}_proj", (rows, H), bias=bias)
        out |= linear_checkpoint(arch, a + "o_proj", (H, q), bias=self.o_bias(arch))
        out |= self.attention_extras(arch, a)
        out[a + "rotary_emb.inv_freq"] = TensorSpec(
            (arch.head_dim // 2,), role="buffer", dtype="float32", fill="inv_freq"
        )
        return out

    def quant_groups(self, arch) -> list[tuple[str, ...]]:
        """Checkpoint modules that can be left unquantised, fused ones together."""
        groups = []
        for i in range(arch.num_layers):
            p = f"model.layers.{i}."
            groups += self.attention_quant_groups(arch, p + "self_attn.")
            if arch.moe is None or not arch.moe.is_moe_layer(i):
                groups += [(p + "mlp.gate_proj", p + "mlp.up_proj"), (p + "mlp.down_proj",)]
        return groups

    def attention_quant_groups(self, arch, a: str) -> list[tuple[str, ...]]:
        return [(a + "q_proj", a + "k_proj", a + "v_proj"), (a + "o_proj",)]

    def hf_defaults(self, config):
        # LlamaConfig.__post_init__: head_dim = hidden_size // num_attention_heads and
        # num_key_value_heads = num_attention_heads when absent; the rest are field defaults.
        heads = config["num_attention_heads"]
        return {
            "head_dim": config["hidden_size"] // heads,
            "num_key_value_heads": heads,
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
        }

    def full_config(self, arch):
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
            **quantization_config(arch),
        }

    # -- runtime layout (the oracle's rules) ---------------------------------------------------

    def layout(self, arch, placement, fmt="default"):
        rules = {}
        if placement.is_first_pp_rank or (placement.is_last_pp_rank and arch.tie_word_embeddings):
            rules["model.embed_tokens.weight"] = VocabParallel(Source("model.embed_tokens.weight"))
        for i in placement.layers:
            p = f"model.layers.{i}."
            rules |= self.attention_layout(arch, p + "self_attn.")
            rules |= self.mlp_layout(arch, i, p, fmt)
            for norm in ("input_layernorm", "post_attention_layernorm"):
                rules[p + f"{norm}.weight"] = Replicated(Source(p + f"{norm}.weight"))
        if placement.is_last_pp_rank:
            rules["model.norm.weight"] = Replicated(Source("model.norm.weight"))
            if not arch.tie_word_embeddings:
                rules["lm_head.weight"] = VocabParallel(Source("lm_head.weight"))
        return rules

    def attention_layout(self, arch, a: str) -> dict:
        qkv = tuple(a + f"{x}_proj" for x in "qkv")
        rules = linear_layout(
            arch,
            wrapped(arch, a + "qkv_proj.weight", "qkv"),
            QKV(tuple((x, Source(m + ".weight")) for x, m in zip("qkv", qkv))),
            qkv,
        )
        if self.qkv_bias(arch):
            rules[wrapped(arch, a + "qkv_proj.bias", "qkv")] = QKV(
                tuple((x, Source(m + ".bias")) for x, m in zip("qkv", qkv))
            )
        o = a + "o_proj"
        rules |= linear_layout(
            arch, wrapped(arch, o + ".weight", "o"), Sharded(Source(o + ".weight"), ROW), (o,)
        )
        if self.o_bias(arch):
            rules[wrapped(arch, o + ".bias", "o")] = Replicated(Source(o + ".bias"))
        for name in self.attention_extras(arch, a):
            rules[name] = Replicated(Source(name))
        return rules


def dense_mlp_checkpoint(arch, m: str, size: int) -> dict[str, TensorSpec]:
    """gate/up/down of a SwiGLU MLP under prefix ``m`` (``...mlp.`` or ``...shared_expert.``)."""
    H = arch.hidden_size
    return (
        linear_checkpoint(arch, m + "gate_proj", (size, H))
        | linear_checkpoint(arch, m + "up_proj", (size, H))
        | linear_checkpoint(arch, m + "down_proj", (H, size))
    )


def dense_mlp_layout(arch, m: str) -> dict:
    gate, up, down = m + "gate_proj", m + "up_proj", m + "down_proj"
    gate_up = Stacked((("0 (gate)", Source(gate + ".weight")), ("1 (up)", Source(up + ".weight"))))
    return linear_layout(
        arch, wrapped(arch, m + "gate_up_proj.weight", "gate_up"), gate_up, (gate, up)
    ) | linear_layout(
        arch, wrapped(arch, m + "down_proj.weight", "down"), Sharded(Source(down + ".weight"), ROW), (down,)
    )


SPEC = Llama()
