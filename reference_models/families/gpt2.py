"""``gpt2``: Conv1D weights stored [in, out], fused ``c_attn``, learned positions, mask buffers."""

from __future__ import annotations

from .rules import Replicated, Sharded, Source, VocabParallel, qkv_fused
from .base import FamilySpec, TensorSpec

COLUMN, ROW = 0, 1


class GPT2(FamilySpec):
    model_type = "gpt2"
    nulled = ("n_inner",)  # GPT-2's own config.json: "n_inner": null, meaning 4 * n_embd

    def checkpoint(self, arch, fmt="default"):
        H, I, P = arch.hidden_size, arch.intermediate_size, arch.max_position_embeddings
        out = {
            "transformer.wte.weight": TensorSpec((arch.vocab_size, H)),
            "transformer.wpe.weight": TensorSpec((P, H)),
        }
        for i in range(arch.num_layers):
            p = f"transformer.h.{i}."
            out |= {
                p + "ln_1.weight": TensorSpec((H,)),
                p + "ln_1.bias": TensorSpec((H,)),
                p + "attn.c_attn.weight": TensorSpec((H, 3 * H)),
                p + "attn.c_attn.bias": TensorSpec((3 * H,)),
                p + "attn.c_proj.weight": TensorSpec((H, H)),
                p + "attn.c_proj.bias": TensorSpec((H,)),
                p + "attn.bias": TensorSpec((1, 1, P, P), role="buffer", dtype="bool", fill="tril"),
                p + "attn.masked_bias": TensorSpec((), role="buffer", dtype="float32", fill="-1e4"),
                p + "ln_2.weight": TensorSpec((H,)),
                p + "ln_2.bias": TensorSpec((H,)),
                p + "mlp.c_fc.weight": TensorSpec((H, I)),
                p + "mlp.c_fc.bias": TensorSpec((I,)),
                p + "mlp.c_proj.weight": TensorSpec((I, H)),
                p + "mlp.c_proj.bias": TensorSpec((H,)),
            }
        out["transformer.ln_f.weight"] = TensorSpec((H,))
        out["transformer.ln_f.bias"] = TensorSpec((H,))
        if arch.tie_word_embeddings:
            out["lm_head.weight"] = TensorSpec(
                (arch.vocab_size, H), role="alias", fill="copy:transformer.wte.weight"
            )
        else:
            out["lm_head.weight"] = TensorSpec((arch.vocab_size, H))
        return out

    def hf_defaults(self, config):
        # GPT2Config: n_inner None (GPT2MLP then uses 4 * n_embd), tie_word_embeddings True.
        return {"n_inner": 4 * config["n_embd"], "tie_word_embeddings": True}

    def full_config(self, arch):
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_embd": arch.hidden_size,
            "n_layer": arch.num_layers,
            "n_head": arch.num_heads,
            "n_inner": arch.intermediate_size,
            "n_positions": arch.max_position_embeddings,
            "vocab_size": arch.vocab_size,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": arch.tie_word_embeddings,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "dtype": arch.dtype,
            "torch_dtype": arch.dtype,
        }

    def layout(self, arch, placement, fmt="default"):
        H = arch.hidden_size
        rules = {}
        if placement.is_first_pp_rank or (placement.is_last_pp_rank and arch.tie_word_embeddings):
            rules["transformer.wte.weight"] = VocabParallel(Source("transformer.wte.weight"))
        if placement.is_first_pp_rank:
            rules["transformer.wpe.weight"] = Replicated(Source("transformer.wpe.weight"))
        for i in placement.layers:
            p = f"transformer.h.{i}."
            for ln in ("ln_1", "ln_2"):
                for kind in ("weight", "bias"):
                    rules[p + f"{ln}.{kind}"] = Replicated(Source(p + f"{ln}.{kind}"))
            rules[p + "attn.c_attn.weight"] = qkv_fused(p + "attn.c_attn.weight", H, H, True)
            rules[p + "attn.c_attn.bias"] = qkv_fused(p + "attn.c_attn.bias", H, H, False)
            rules[p + "attn.c_proj.weight"] = Sharded(Source(p + "attn.c_proj.weight", True), ROW)
            rules[p + "attn.c_proj.bias"] = Replicated(Source(p + "attn.c_proj.bias"))
            rules[p + "mlp.c_fc.weight"] = Sharded(Source(p + "mlp.c_fc.weight", True), COLUMN)
            rules[p + "mlp.c_fc.bias"] = Sharded(Source(p + "mlp.c_fc.bias"), COLUMN)
            rules[p + "mlp.c_proj.weight"] = Sharded(Source(p + "mlp.c_proj.weight", True), ROW)
            rules[p + "mlp.c_proj.bias"] = Replicated(Source(p + "mlp.c_proj.bias"))
        if placement.is_last_pp_rank:
            for kind in ("weight", "bias"):
                rules[f"transformer.ln_f.{kind}"] = Replicated(Source(f"transformer.ln_f.{kind}"))
            if not arch.tie_word_embeddings:
                rules["lm_head.weight"] = VocabParallel(Source("lm_head.weight"))
        return rules


SPEC = GPT2()
