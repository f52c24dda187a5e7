"""Hand-computed checks of the reference loader, independent of the oracle and the strategies.

Each expectation below is written out from docs/runtime-layout.md by hand (explicit row and
column ranges), so this file is a second reading of the document, not a re-run of the loader's
own slicing code.
"""

from __future__ import annotations

import random

import pytest
import torch

from weightcheck.fixtures.checkpoint import write_checkpoint
from weightcheck.arch import Arch, Placement
from weightcheck.reference_models.reference_loader import loader
from weightcheck.reference_models.reference_loader.gpt2 import GPT2LMHeadModel


def llama_tensors(arch: Arch, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    H, I, V, dt = arch.hidden_size, arch.intermediate_size, arch.vocab_size, arch.torch_dtype

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dt)

    t = {"model.embed_tokens.weight": r(V, H), "model.norm.weight": r(H), "lm_head.weight": r(V, H)}
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = r(arch.q_size, H)
        t[p + "self_attn.k_proj.weight"] = r(arch.kv_size, H)
        t[p + "self_attn.v_proj.weight"] = r(arch.kv_size, H)
        t[p + "self_attn.o_proj.weight"] = r(H, arch.q_size)
        if arch.attention_bias:
            t[p + "self_attn.q_proj.bias"] = r(arch.q_size)
            t[p + "self_attn.k_proj.bias"] = r(arch.kv_size)
            t[p + "self_attn.v_proj.bias"] = r(arch.kv_size)
            t[p + "self_attn.o_proj.bias"] = r(H)
        t[p + "mlp.gate_proj.weight"] = r(I, H)
        t[p + "mlp.up_proj.weight"] = r(I, H)
        t[p + "mlp.down_proj.weight"] = r(H, I)
        t[p + "input_layernorm.weight"] = r(H)
        t[p + "post_attention_layernorm.weight"] = r(H)
        t[p + "self_attn.rotary_emb.inv_freq"] = torch.rand(arch.head_dim // 2, generator=g)
    return t


def gpt2_tensors(arch: Arch, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    H, I, V, P, dt = (arch.hidden_size, arch.intermediate_size, arch.vocab_size,
                      arch.max_position_embeddings, arch.torch_dtype)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dt)

    t = {"transformer.wte.weight": r(V, H), "transformer.wpe.weight": r(P, H),
         "transformer.ln_f.weight": r(H), "transformer.ln_f.bias": r(H), "lm_head.weight": r(V, H)}
    for i in range(arch.num_layers):
        p = f"transformer.h.{i}."
        t.update({
            p + "ln_1.weight": r(H), p + "ln_1.bias": r(H),
            p + "ln_2.weight": r(H), p + "ln_2.bias": r(H),
            p + "attn.c_attn.weight": r(H, 3 * H), p + "attn.c_attn.bias": r(3 * H),
            p + "attn.c_proj.weight": r(H, H), p + "attn.c_proj.bias": r(H),
            p + "mlp.c_fc.weight": r(H, I), p + "mlp.c_fc.bias": r(I),
            p + "mlp.c_proj.weight": r(I, H), p + "mlp.c_proj.bias": r(H),
            p + "attn.bias": torch.ones(1, 1, P, P, dtype=torch.bool).tril(),
            p + "attn.masked_bias": torch.tensor(-1e4),
        })
    return t


def load(tmp_path, arch, placement, tensors, names=None, files=1, model=None):
    names = list(tensors) if names is None else list(names)
    random.Random(1).shuffle(names)  # a loader must not depend on key order
    chunks = [names[k::files] for k in range(files)]
    ckpt = write_checkpoint(tmp_path / "ckpt", {"model_type": arch.family}, chunks, tensors)
    model = loader.build(arch, placement) if model is None else model
    loaded = loader.load(model, ckpt)
    return model, loaded, dict(model.named_parameters())


def assert_complete(loaded, state):
    assert loaded == set(state)
    for name, p in state.items():
        assert not torch.isnan(p.float()).any(), name


def test_llama_gqa_replication_rank3_of_4(tmp_path):
    arch = Arch("llama", hidden_size=8, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=2,
                intermediate_size=8, vocab_size=70)
    t = llama_tensors(arch)
    model, loaded, s = load(tmp_path, arch, Placement.single(arch, 4, 3), t, files=2)
    assert_complete(loaded, s)
    p, q = "model.layers.1.", "model.layers.1.self_attn."
    # 4 ranks, 2 kv heads: ranks 2 and 3 share kv head 1 = rows [2, 4) with hd=2.
    qkv = s[q + "qkv_proj.weight"]
    assert qkv.shape == (2 + 2 + 2, 8)
    assert torch.equal(qkv[0:2], t[q + "q_proj.weight"][6:8])  # query head 3
    assert torch.equal(qkv[2:4], t[q + "k_proj.weight"][2:4])
    assert torch.equal(qkv[4:6], t[q + "v_proj.weight"][2:4])
    assert torch.equal(s[q + "o_proj.weight"], t[q + "o_proj.weight"][:, 6:8])
    gate_up = s[p + "mlp.gate_up_proj.weight"]
    assert torch.equal(gate_up, torch.cat([t[p + "mlp.gate_proj.weight"][6:8],
                                           t[p + "mlp.up_proj.weight"][6:8]]))
    assert torch.equal(s[p + "mlp.down_proj.weight"], t[p + "mlp.down_proj.weight"][:, 6:8])
    # V=70 pads to 128; rank 3 holds padded rows [96, 128): padding only.
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert s[name].shape == (32, 8) and torch.equal(s[name], torch.zeros(32, 8))
    assert torch.equal(s["model.norm.weight"], t["model.norm.weight"])


def test_llama_vocab_boundary_rank(tmp_path):
    arch = Arch("llama", hidden_size=8, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=2,
                intermediate_size=8, vocab_size=70)
    t = llama_tensors(arch)
    _, loaded, s = load(tmp_path, arch, Placement.single(arch, 4, 2), t)
    assert_complete(loaded, s)
    emb = s["model.embed_tokens.weight"]  # padded rows [64, 96): 64..69 real, 70..95 zero
    assert torch.equal(emb[:6], t["model.embed_tokens.weight"][64:70])
    assert torch.equal(emb[6:], torch.zeros(26, 8))
    # rank 2 of 4 with 2 kv heads -> kv head 1 as well
    k = s["model.layers.0.self_attn.qkv_proj.weight"][2:4]
    assert torch.equal(k, t["model.layers.0.self_attn.k_proj.weight"][2:4])


@pytest.mark.parametrize("rank", [0, 1])
def test_llama_tp2_attention_bias(tmp_path, rank):
    arch = Arch("llama", hidden_size=8, num_layers=1, num_heads=4, num_kv_heads=4, head_dim=2,
                intermediate_size=6, vocab_size=64, attention_bias=True, dtype="bfloat16")
    t = llama_tensors(arch)
    _, loaded, s = load(tmp_path, arch, Placement.single(arch, 2, rank), t)
    assert_complete(loaded, s)
    q = "model.layers.0.self_attn."
    # T=2 <= nKV=4: two query heads and two kv heads per rank, 4 rows each.
    rows = slice(4 * rank, 4 * rank + 4)
    bias = s[q + "qkv_proj.bias"]
    assert bias.dtype == torch.bfloat16 and bias.shape == (12,)
    assert torch.equal(bias, torch.cat([t[q + "q_proj.bias"][rows], t[q + "k_proj.bias"][rows],
                                        t[q + "v_proj.bias"][rows]]))
    assert torch.equal(s[q + "o_proj.bias"], t[q + "o_proj.bias"])  # row-parallel bias: whole
    assert torch.equal(s[q + "o_proj.weight"], t[q + "o_proj.weight"][:, rows])
    gate_up = s["model.layers.0.mlp.gate_up_proj.weight"]
    assert torch.equal(gate_up[3:], t["model.layers.0.mlp.up_proj.weight"][3 * rank:3 * rank + 3])


def test_llama_tied_skips_redundant_lm_head(tmp_path):
    arch = Arch("llama", hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4,
                intermediate_size=8, vocab_size=50, tie_word_embeddings=True)
    t = llama_tensors(arch)  # includes an lm_head.weight that differs from the embedding
    model, loaded, s = load(tmp_path, arch, Placement.single(arch), t)
    assert_complete(loaded, s)
    assert "lm_head.weight" not in s
    assert model.lm_head.weight is s["model.embed_tokens.weight"]
    assert torch.equal(s["model.embed_tokens.weight"][:50], t["model.embed_tokens.weight"])
    assert torch.equal(s["model.embed_tokens.weight"][50:], torch.zeros(14, 8))


def test_llama_missing_k_proj_leaves_qkv_unloaded(tmp_path):
    arch = Arch("llama", hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=4,
                intermediate_size=8, vocab_size=64)
    t = llama_tensors(arch)
    names = [n for n in t if n != "model.layers.1.self_attn.k_proj.weight"]
    _, loaded, s = load(tmp_path, arch, Placement.single(arch, 2, 1), t, names=names)
    assert set(s) - loaded == {"model.layers.1.self_attn.qkv_proj.weight"}


def test_llama_pipeline_rank_keeps_global_indices(tmp_path):
    arch = Arch("llama", hidden_size=8, num_layers=3, num_heads=2, num_kv_heads=2, head_dim=4,
                intermediate_size=8, vocab_size=64)
    t = llama_tensors(arch)
    placement = Placement(layer_partition=(2, 1), pp_size=2, pp_rank=1)
    _, loaded, s = load(tmp_path, arch, placement, t)
    assert_complete(loaded, s)
    assert {n.split(".")[2] for n in s if n.startswith("model.layers.")} == {"2"}
    assert "model.embed_tokens.weight" not in s and "lm_head.weight" in s


def test_llama_unknown_name_raises(tmp_path):
    arch = Arch("llama", hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=4,
                intermediate_size=8, vocab_size=64)
    t = llama_tensors(arch)
    t["model.layers.0.mlp.surprise.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match="surprise"):
        load(tmp_path, arch, Placement.single(arch), t)
    with pytest.raises(ValueError, match="family"):
        loader.build(Arch("mystery", 8, 1, 2, 2, 4, 8, 64), Placement(layer_partition=(1,)))


GPT2 = Arch("gpt2", hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=4,
            intermediate_size=12, vocab_size=60, max_position_embeddings=6)


def test_gpt2_tp2_rank1_conv1d_and_mask_buffers(tmp_path):
    t = gpt2_tensors(GPT2)
    _, loaded, s = load(tmp_path, GPT2, Placement.single(GPT2, 2, 1), t)
    assert_complete(loaded, s)
    p = "transformer.h.1."
    # c_attn [8, 24]: q columns [0, 8), k [8, 16), v [16, 24); rank 1 holds head 1 of each.
    w, b = t[p + "attn.c_attn.weight"], t[p + "attn.c_attn.bias"]
    cols = [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]
    assert torch.equal(s[p + "attn.c_attn.weight"], w[:, cols].T)
    assert torch.equal(s[p + "attn.c_attn.bias"], b[cols])
    # row-parallel of the transpose: runtime [out=8, in/2=4], input features [4, 8)
    assert torch.equal(s[p + "attn.c_proj.weight"], t[p + "attn.c_proj.weight"][4:8, :].T)
    assert torch.equal(s[p + "attn.c_proj.bias"], t[p + "attn.c_proj.bias"])
    assert torch.equal(s[p + "mlp.c_fc.weight"], t[p + "mlp.c_fc.weight"][:, 6:12].T)
    assert torch.equal(s[p + "mlp.c_fc.bias"], t[p + "mlp.c_fc.bias"][6:12])
    assert torch.equal(s[p + "mlp.c_proj.weight"], t[p + "mlp.c_proj.weight"][6:12, :].T)
    assert torch.equal(s["transformer.wpe.weight"], t["transformer.wpe.weight"])
    # V=60 pads to 64; rank 1 holds padded rows [32, 64): 32..59 real, 60..63 zero
    assert torch.equal(s["lm_head.weight"][:28], t["lm_head.weight"][32:60])
    assert torch.equal(s["lm_head.weight"][28:], torch.zeros(4, 8))


def test_gpt2_tied_without_transformer_prefix(tmp_path):
    arch = Arch(**{**GPT2.to_dict(), "tie_word_embeddings": True, "dtype": "float16"})
    t = {n.removeprefix("transformer."): v for n, v in gpt2_tensors(arch).items()}
    _, loaded, s = load(tmp_path, arch, Placement.single(arch), t)
    assert_complete(loaded, s)
    assert "lm_head.weight" not in s
    assert torch.equal(s["transformer.wte.weight"][:60], t["wte.weight"])
    assert torch.equal(s["transformer.h.0.attn.c_attn.weight"], t["h.0.attn.c_attn.weight"].T)


def test_gpt2_mutant_hooks_are_caught(tmp_path):
    class KeepsMaskedBias(GPT2LMHeadModel):
        def is_skipped(self, name):
            return name.endswith(".attn.bias")

    class NoTranspose(GPT2LMHeadModel):
        def needs_transpose(self, name):
            return False

    t = gpt2_tensors(GPT2)
    placement = Placement.single(GPT2)
    with pytest.raises(ValueError, match="masked_bias"):
        load(tmp_path / "a", GPT2, placement, t, model=KeepsMaskedBias(GPT2, placement))
    with pytest.raises(ValueError, match="shape"):
        load(tmp_path / "b", GPT2, placement, t, model=NoTranspose(GPT2, placement))


def test_llama_pipeline_last_rank_tied_loads_embedding(tmp_path):
    arch = Arch("llama", hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=4,
                intermediate_size=8, vocab_size=64, tie_word_embeddings=True)
    t = llama_tensors(arch)
    placement = Placement(layer_partition=(1, 1), pp_size=2, pp_rank=1)
    model, loaded, s = load(tmp_path, arch, placement, t)
    assert_complete(loaded, s)  # layer 0's tensors and lm_head.weight were skipped, not errors
    assert {n.split(".")[2] for n in s if n.startswith("model.layers.")} == {"1"}
    assert torch.equal(s["model.embed_tokens.weight"], t["model.embed_tokens.weight"])
    assert model.lm_head.weight is s["model.embed_tokens.weight"] and "lm_head.weight" not in s
