"""The oracle against hand-computed answers, independent of both loaders and of Hypothesis."""

import torch

from weightcheck.arch import Arch, Placement
from weightcheck.reference_models.oracle import expected_state
from weightcheck.reference_models.oracle.expected import checkpoint_shapes, needed_sources


def llama(**kw):
    base = dict(
        family="llama", hidden_size=4, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=2,
        intermediate_size=8, vocab_size=70,
    )
    return Arch(**{**base, **kw})


def numbered(arch):
    """Each checkpoint tensor holds distinct values: element i of tensor k is 1000*k + i."""
    from weightcheck.reference_models.families import family_spec

    specs = family_spec(arch.family).checkpoint(arch)
    return {
        name: (torch.arange(torch.Size(s.shape).numel(), dtype=torch.float32) + 1000 * k).reshape(s.shape)
        for k, (name, s) in enumerate(specs.items())
    }


def test_gqa_replication_rank_takes_kv_head_rank_div_replicas():
    arch = llama()
    t = numbered(arch)
    exp = expected_state(arch, Placement((1,), tp_size=4, tp_rank=3), t)
    qkv = exp.params["model.layers.0.self_attn.qkv_proj.weight"].value
    # 4 ranks, 2 kv heads: rank 3 holds query head 3 (rows 6:8), kv head 1 (rows 2:4).
    q = t["model.layers.0.self_attn.q_proj.weight"]
    k = t["model.layers.0.self_attn.k_proj.weight"]
    v = t["model.layers.0.self_attn.v_proj.weight"]
    assert torch.equal(qkv, torch.cat([q[6:8], k[2:4], v[2:4]]))


def test_gate_up_is_each_piece_sharded_then_stacked():
    arch = llama()
    t = numbered(arch)
    exp = expected_state(arch, Placement((1,), tp_size=2, tp_rank=1), t)
    gu = exp.params["model.layers.0.mlp.gate_up_proj.weight"].value
    gate, up = t["model.layers.0.mlp.gate_proj.weight"], t["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(gu, torch.cat([gate[4:8], up[4:8]]))


def test_row_parallel_splits_columns_and_keeps_bias_whole():
    arch = llama(attention_bias=True)
    t = numbered(arch)
    exp = expected_state(arch, Placement((1,), tp_size=2, tp_rank=1), t)
    o = t["model.layers.0.self_attn.o_proj.weight"]
    assert torch.equal(exp.params["model.layers.0.self_attn.o_proj.weight"].value, o[:, 4:8])
    assert torch.equal(
        exp.params["model.layers.0.self_attn.o_proj.bias"].value, t["model.layers.0.self_attn.o_proj.bias"]
    )


def test_vocab_padding_rows_are_zero_and_ranks_are_contiguous_blocks():
    arch = llama(vocab_size=70)
    t = numbered(arch)
    # 70 rows pad to 128; rank 1 of 2 holds padded rows 64:128 = real rows 64:70, then zeros.
    emb = expected_state(arch, Placement((1,), tp_size=2, tp_rank=1), t).params["model.embed_tokens.weight"]
    assert emb.value.shape == (64, 4)
    assert torch.equal(emb.value[:6], t["model.embed_tokens.weight"][64:70])
    assert not emb.value[6:].any()
    # tp 3: padding unit lcm(64, 3) = 192, 64 rows per rank.
    arch3 = llama(vocab_size=70, num_heads=3, num_kv_heads=1, intermediate_size=6)
    t3 = numbered(arch3)
    emb3 = expected_state(arch3, Placement((1,), tp_size=3, tp_rank=2), t3).params["model.embed_tokens.weight"]
    assert emb3.value.shape == (64, 4) and not emb3.value.any()


def test_a_split_that_does_not_divide_is_refused():
    import pytest

    with pytest.raises(ValueError, match="do not split"):
        expected_state(llama(), Placement((1,), tp_size=3, tp_rank=0), numbered(llama()))


def test_tied_model_has_no_lm_head_and_does_not_need_it():
    arch = llama(tie_word_embeddings=True)
    placement = Placement((1,))
    exp = expected_state(arch, placement, numbered(arch))
    assert "lm_head.weight" not in exp.params
    assert "lm_head.weight" not in needed_sources(arch, placement)
    assert "model.layers.0.self_attn.rotary_emb.inv_freq" not in needed_sources(arch, placement)


def test_gpt2_c_attn_is_split_by_total_heads_and_transposed():
    arch = Arch(
        family="gpt2", hidden_size=4, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=2,
        intermediate_size=4, vocab_size=5, attention_bias=True,
    )
    t = numbered(arch)
    exp = expected_state(arch, Placement((1,), tp_size=2, tp_rank=1), t)
    w = t["transformer.h.0.attn.c_attn.weight"]  # [H, 3H] = [in, out]
    qkv = exp.params["transformer.h.0.attn.c_attn.weight"].value
    # rank 1 of 2: query head 1 = out columns 2:4, k head 1 = 6:8, v head 1 = 10:12.
    assert torch.equal(qkv, torch.cat([w[:, 2:4].t(), w[:, 6:8].t(), w[:, 10:12].t()]))
    fc = exp.params["transformer.h.0.mlp.c_fc.weight"].value
    assert torch.equal(fc, t["transformer.h.0.mlp.c_fc.weight"][:, 2:4].t())
    proj = exp.params["transformer.h.0.attn.c_proj.weight"].value
    assert torch.equal(proj, t["transformer.h.0.attn.c_proj.weight"].t()[:, 2:4])


def test_dependents_of_a_shard_are_the_fused_parameter():
    arch = llama()
    exp = expected_state(arch, Placement((1,)), numbered(arch))
    assert exp.dependents("model.layers.0.self_attn.k_proj.weight") == {
        "model.layers.0.self_attn.qkv_proj.weight"
    }
    assert exp.tracked == set(exp.params)


def test_a_parameter_the_model_keeps_in_float32_may_be_held_as_its_exact_cast():
    """DeepSeek-V3.2's indexer k_norm and wk_weights_proj (kept in float32 by the model's own
    code): float32 holding the exact cast passes; float32 elsewhere, or another float32 value,
    does not."""
    from weightcheck.arch import MLA
    from weightcheck.conformance.assertions import param_mismatches

    arch = Arch(
        family="deepseek_v32", hidden_size=4, num_layers=1, num_heads=2, num_kv_heads=2,
        head_dim=2, intermediate_size=2, vocab_size=5, dtype="bfloat16",
        mla=MLA(q_lora_rank=2, kv_lora_rank=2, qk_nope_head_dim=2, qk_rope_head_dim=2,
                v_head_dim=2, index_n_heads=2, index_head_dim=2),
    )
    tensors = {n: t.to(torch.bfloat16) / 7 for n, t in numbered(arch).items()}
    exp = expected_state(arch, Placement.single(arch), tensors)
    shapes = checkpoint_shapes(arch)
    norm = exp.params["model.layers.0.self_attn.indexer.k_norm.weight"]
    assert norm.float32_allowed
    assert not param_mismatches(norm.name, norm.value.float(), norm, shapes)
    wider = norm.value.float()
    assert param_mismatches(norm.name, torch.nextafter(wider, wider + 1), norm, shapes)
    embed = exp.params["model.embed_tokens.weight"]
    assert param_mismatches(embed.name, embed.value.float(), embed, shapes)
