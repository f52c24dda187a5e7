"""``deepseek_v32``: MLA attention with the sparse-attention indexer (DeepSeek-V3.2, GLM-5).

Modelled as far as loading sees it (vLLM's ``deepseek_v2.py``): the MLA projections with
``q_a_proj`` and ``kv_a_proj_with_mqa`` merged into a replicated ``fused_qkv_a_proj``, and the
indexer whose ``wk`` (FP8 in GLM-5-FP8) and ``weights_proj`` (never quantised) are fused into
one model-dtype ``wk_weights_proj``: an FP8 ``wk`` is dequantised at load time (seed #42944).
Every layer has a dense MLP; MoE, rope and MTP layers are not modelled.
"""

from __future__ import annotations

from .rules import Concatenated, Replicated, Sharded, Source
from .base import TensorSpec
from .llama import COLUMN, ROW, Llama
from .quant import linear_checkpoint, linear_layout


class DeepseekV32(Llama):
    model_type = "deepseek_v32"
    architecture = "DeepseekV32ForCausalLM"

    def attention_checkpoint(self, arch, a):
        H, nH, m = arch.hidden_size, arch.num_heads, arch.mla
        out = {}
        out |= linear_checkpoint(arch, a + "q_a_proj", (m.q_lora_rank, H))
        out[a + "q_a_layernorm.weight"] = TensorSpec((m.q_lora_rank,))
        out |= linear_checkpoint(arch, a + "q_b_proj", (nH * m.qk_head_dim, m.q_lora_rank))
        out |= linear_checkpoint(
            arch, a + "kv_a_proj_with_mqa", (m.kv_lora_rank + m.qk_rope_head_dim, H)
        )
        out[a + "kv_a_layernorm.weight"] = TensorSpec((m.kv_lora_rank,))
        out |= linear_checkpoint(
            arch, a + "kv_b_proj", (nH * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank)
        )
        out |= linear_checkpoint(arch, a + "o_proj", (H, nH * m.v_head_dim))
        x = a + "indexer."
        out |= linear_checkpoint(arch, x + "wq_b", (m.index_n_heads * m.index_head_dim, m.q_lora_rank))
        out |= linear_checkpoint(arch, x + "wk", (m.index_head_dim, H))
        out[x + "k_norm.weight"] = TensorSpec((m.index_head_dim,))
        out[x + "k_norm.bias"] = TensorSpec((m.index_head_dim,))
        out[x + "weights_proj.weight"] = TensorSpec((m.index_n_heads, H))
        return out

    def attention_quant_groups(self, arch, a):
        return [
            (a + "q_a_proj", a + "kv_a_proj_with_mqa"),
            (a + "q_b_proj",),
            (a + "kv_b_proj",),
            (a + "o_proj",),
            (a + "indexer.wq_b",),
            (a + "indexer.wk",),
        ]

    def attention_layout(self, arch, a):
        q_a, kv_a = a + "q_a_proj", a + "kv_a_proj_with_mqa"
        fused = Concatenated(
            (("0 (q_a_proj)", Source(q_a + ".weight")), ("1 (kv_a_proj_with_mqa)", Source(kv_a + ".weight")))
        )
        rules = linear_layout(arch, a + "fused_qkv_a_proj.weight", fused, (q_a, kv_a))
        for norm in ("q_a_layernorm", "kv_a_layernorm"):
            rules[a + norm + ".weight"] = Replicated(Source(a + norm + ".weight"))
        for proj, dim in (("q_b_proj", COLUMN), ("kv_b_proj", COLUMN), ("o_proj", ROW)):
            rules |= linear_layout(
                arch, a + proj + ".weight", Sharded(Source(a + proj + ".weight"), dim), (a + proj,)
            )
        x = a + "indexer."
        rules |= linear_layout(arch, x + "wq_b.weight", Replicated(Source(x + "wq_b.weight")), (x + "wq_b",))
        rules[x + "wk_weights_proj.weight"] = Concatenated(
            (("0 (wk)", self.dequantized(arch, x + "wk")), ("1 (weights_proj)", Source(x + "weights_proj.weight")))
        )
        for kind in ("weight", "bias"):
            rules[x + f"k_norm.{kind}"] = Replicated(Source(x + f"k_norm.{kind}"))
        return rules

    def kept_in_float32(self, arch) -> frozenset[str]:
        """The indexer's ``weights_proj`` (transformers: ``_keep_in_fp32_modules``; here inside
        the fused ``wk_weights_proj``) and ``k_norm`` (a float32 LayerNorm in DeepSeek's and
        vLLM's code)."""
        return frozenset(
            f"model.layers.{i}.self_attn.indexer.{name}"
            for i in range(arch.num_layers)
            for name in ("wk_weights_proj.weight", "k_norm.weight", "k_norm.bias")
        )

    @staticmethod
    def dequantized(arch, module: str) -> Source:
        """``module.weight`` in the model dtype: dequantised by its scale when FP8."""
        if not arch.fp8(module):
            return Source(module + ".weight")
        block = arch.quant.block
        scale = module + (".weight_scale_inv" if block else ".weight_scale")
        return Source(module + ".weight", scale=scale, block=block)

    def config_extras(self, arch):
        m = arch.mla
        return {
            "q_lora_rank": m.q_lora_rank,
            "kv_lora_rank": m.kv_lora_rank,
            "qk_nope_head_dim": m.qk_nope_head_dim,
            "qk_rope_head_dim": m.qk_rope_head_dim,
            "v_head_dim": m.v_head_dim,
            "head_dim": m.qk_rope_head_dim,
            "index_n_heads": m.index_n_heads,
            "index_head_dim": m.index_head_dim,
            "index_topk": 4,
            "first_k_dense_replace": arch.num_layers,
            "moe_layer_freq": 1,
            "rope_scaling": yarn_rope_scaling(arch.max_position_embeddings),
            "attention_bias": False,
        }

    def hf_defaults(self, config):
        # DeepseekV32Config: head_dim is always set to qk_rope_head_dim (__post_init__, whatever
        # config.json says); tie_word_embeddings and attention_bias default to False.
        return {
            "head_dim": config["qk_rope_head_dim"],
            "tie_word_embeddings": False,
            "attention_bias": False,
        }


def yarn_rope_scaling(max_positions: int) -> dict:
    """DeepSeek-V3.2's YaRN ``rope_scaling`` (its config.json: ``{"type": "yarn", "factor": 40,
    "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
    "mscale_all_dim": 1.0}`` for 163840 positions), scaled to the tiny context so that
    ``factor = max_position_embeddings / original_max_position_embeddings`` still holds."""
    original = max(1, max_positions // 4)
    return {
        "type": "yarn",
        "factor": max_positions / original,
        "original_max_position_embeddings": original,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    }


SPEC = DeepseekV32()
