"""The transformers adapter's own naming code (adapters/transformers_loader.py), on hand-made
tensors; skipped unless transformers is installed (ci/adapters/install_transformers.sh)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from adapters import transformers_loader as tl  # noqa: E402


def test_runtime_names_map_to_canonical_names():
    p = "model.layers.3."
    assert tl.canonical_name(p + "self_attn.k_proj.weight") == p + "self_attn.qkv_proj.weight"
    assert tl.canonical_name(p + "self_attn.v_proj.bias") == p + "self_attn.qkv_proj.bias"
    assert tl.canonical_name(p + "self_attn.o_proj.weight") == p + "self_attn.o_proj.weight"
    assert tl.canonical_name(p + "mlp.up_proj.weight") == p + "mlp.gate_up_proj.weight"
    assert (
        tl.canonical_name(p + "mlp.shared_expert.gate_proj.weight")
        == p + "mlp.shared_expert.gate_up_proj.weight"
    )
    assert tl.canonical_name(p + "mlp.shared_expert_gate.weight") == p + "mlp.shared_expert_gate.weight"
    assert tl.canonical_name(p + "mlp.gate.weight") == p + "mlp.gate.weight"  # the router
    assert tl.canonical_name(p + "mlp.experts.gate_up_proj") == p + "mlp.experts.w13_weight"
    assert tl.canonical_name(p + "mlp.experts.down_proj") == p + "mlp.experts.w2_weight"
    assert tl.canonical_name(p + "mlp.experts.7.up_proj.weight") == p + "mlp.experts.w13_weight"
    assert tl.canonical_name(p + "mlp.experts.7.down_proj.weight") == p + "mlp.experts.w2_weight"
    # GPT-2 keeps its names; only the values are transposed
    assert tl.canonical_name("transformer.h.0.attn.c_attn.weight") == "transformer.h.0.attn.c_attn.weight"
    assert tl.piece("transformer.h.0.attn.c_attn.weight").transpose
    assert not tl.piece("transformer.h.0.attn.c_attn.bias").transpose
    assert not tl.piece("transformer.h.0.attn.bias").transpose


def test_fused_and_padded_values():
    q, k, v = torch.full((4, 2), 1.0), torch.full((2, 2), 2.0), torch.full((2, 2), 3.0)
    embed = torch.randn(70, 2)
    out = tl.to_canonical(
        {
            "model.layers.0.self_attn.v_proj.weight": v,
            "model.layers.0.self_attn.q_proj.weight": q,
            "model.layers.0.self_attn.k_proj.weight": k,
            "model.embed_tokens.weight": embed,
        }
    )
    assert torch.equal(out["model.layers.0.self_attn.qkv_proj.weight"], torch.cat([q, k, v]))
    padded = out["model.embed_tokens.weight"]
    assert padded.shape == (128, 2)
    assert torch.equal(padded[:70], embed) and not padded[70:].any()


def test_experts_per_expert_and_fused_give_the_same_stack():
    E, Im, H = 3, 2, 4
    gate, up, down = torch.randn(E, Im, H), torch.randn(E, Im, H), torch.randn(E, H, Im)
    x = "model.layers.1.mlp.experts."
    per_expert = {}
    for e in reversed(range(E)):  # order must not matter
        per_expert |= {
            f"{x}{e}.up_proj.weight": up[e],
            f"{x}{e}.down_proj.weight": down[e],
            f"{x}{e}.gate_proj.weight": gate[e],
        }
    fused = {f"{x}gate_up_proj": torch.cat([gate, up], dim=1), f"{x}down_proj": down}
    a, b = tl.to_canonical(per_expert), tl.to_canonical(fused)
    assert set(a) == set(b) == {x + "w13_weight", x + "w2_weight"}
    assert torch.equal(a[x + "w13_weight"], b[x + "w13_weight"])
    assert torch.equal(a[x + "w13_weight"][1], torch.cat([gate[1], up[1]]))
    assert torch.equal(a[x + "w2_weight"], down)


def test_incomplete_fused_parameter_is_an_error():
    with pytest.raises(ValueError):
        tl.to_canonical({"model.layers.0.mlp.gate_proj.weight": torch.zeros(2, 2)})


def test_gpt2_conv1d_is_transposed():
    w = torch.randn(4, 12)
    out = tl.to_canonical({"transformer.h.0.attn.c_attn.weight": w})
    assert torch.equal(out["transformer.h.0.attn.c_attn.weight"], w.t())


def test_lora_names():
    assert tl.strip_base_layer("a.experts.base_layer.base_layer.gate_up_proj") == "a.experts.gate_up_proj"
    assert tl.strip_base_layer("a.q_proj.base_layer.weight") == "a.q_proj.weight"
    assert tl.with_base_layer("a.qkv_proj.weight") == "a.qkv_proj.base_layer.weight"
    assert tl.is_lora_weight("a.q_proj.lora_A.default.weight")
    assert not tl.is_lora_weight("a.q_proj.base_layer.weight")


def test_capabilities_promise_only_one_rank():
    caps = tl.loader.capabilities
    assert caps.families == {"llama", "gpt2", "qwen3_moe", "qwen2_moe"}
    assert not caps.features & {"tensor_parallel", "pipeline_parallel", "expert_parallel"}
