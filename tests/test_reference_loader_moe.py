"""Hand-computed checks of the reference loader's MoE, expert-parallel, LoRA and PP handling.

As in test_reference_loader_smoke.py, every expectation is written out by hand from
docs/runtime-layout.md (explicit expert ids, row and column ranges), never by re-running the
loader's own slicing code, and nothing here uses the oracle or the strategies.
"""

from __future__ import annotations

import pytest
import torch

from weightcheck.arch import Arch, LoRA, MoE, Placement
from weightcheck.reference_models.reference_loader import loader
from weightcheck.reference_models.reference_loader.lora import LoRAWrapper
from weightcheck.reference_models.reference_loader.moe import FusedMoE
from weightcheck.reference_models.reference_loader.qwen3_moe import Qwen3MoeForCausalLM

from .test_reference_loader_smoke import assert_complete, llama_tensors, load

ALL_TARGETS = ("qkv", "o", "gate_up", "down", "experts")

# layer 0 dense (intermediate 6), layer 1 sparse: 5 experts of intermediate 4
QWEN3 = Arch("qwen3_moe", hidden_size=8, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=2,
             intermediate_size=6, vocab_size=70,
             moe=MoE(num_experts=5, top_k=2, moe_intermediate_size=4, dense_layers=(0,)))
# head_dim = 8 / 4 = 2; shared expert intermediate 6
QWEN2 = Arch("qwen2_moe", hidden_size=8, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=2,
             intermediate_size=6, vocab_size=70,
             moe=MoE(num_experts=4, top_k=2, moe_intermediate_size=4,
                     shared_expert_intermediate_size=6, dense_layers=(0,)))


def with_(arch: Arch, **changes) -> Arch:
    d = arch.to_dict()
    d.update(changes)
    return Arch.from_dict(d)


def qwen_tensors(arch: Arch, seed: int = 0, fused: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    H, V, dt, moe = arch.hidden_size, arch.vocab_size, arch.torch_dtype, arch.moe
    qwen2 = arch.family == "qwen2_moe"

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dt)

    t = {"model.embed_tokens.weight": r(V, H), "model.norm.weight": r(H), "lm_head.weight": r(V, H)}
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        t[a + "q_proj.weight"] = r(arch.q_size, H)
        t[a + "k_proj.weight"] = r(arch.kv_size, H)
        t[a + "v_proj.weight"] = r(arch.kv_size, H)
        t[a + "o_proj.weight"] = r(H, arch.q_size)
        if qwen2 or arch.attention_bias:
            t[a + "q_proj.bias"] = r(arch.q_size)
            t[a + "k_proj.bias"] = r(arch.kv_size)
            t[a + "v_proj.bias"] = r(arch.kv_size)
        if arch.attention_bias and not qwen2:
            t[a + "o_proj.bias"] = r(H)
        if not qwen2:
            t[a + "q_norm.weight"] = r(arch.head_dim)
            t[a + "k_norm.weight"] = r(arch.head_dim)
        t[p + "input_layernorm.weight"] = r(H)
        t[p + "post_attention_layernorm.weight"] = r(H)
        if i in moe.dense_layers:
            I = arch.intermediate_size
            t[p + "mlp.gate_proj.weight"] = r(I, H)
            t[p + "mlp.up_proj.weight"] = r(I, H)
            t[p + "mlp.down_proj.weight"] = r(H, I)
            continue
        E, Im = moe.num_experts, moe.moe_intermediate_size
        t[p + "mlp.gate.weight"] = r(E, H)
        gate, up, down = r(E, Im, H), r(E, Im, H), r(E, H, Im)
        if fused:
            t[p + "mlp.experts.gate_up_proj"] = torch.cat([gate, up], dim=1)
            t[p + "mlp.experts.down_proj"] = down
        else:
            for e in range(E):
                t[p + f"mlp.experts.{e}.gate_proj.weight"] = gate[e].clone()
                t[p + f"mlp.experts.{e}.up_proj.weight"] = up[e].clone()
                t[p + f"mlp.experts.{e}.down_proj.weight"] = down[e].clone()
        if qwen2:
            Is = moe.shared_expert_intermediate_size
            t[p + "mlp.shared_expert.gate_proj.weight"] = r(Is, H)
            t[p + "mlp.shared_expert.up_proj.weight"] = r(Is, H)
            t[p + "mlp.shared_expert.down_proj.weight"] = r(H, Is)
            t[p + "mlp.shared_expert_gate.weight"] = r(1, H)
    return t


def expert(t, layer, e, proj):
    return t[f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight"]


@pytest.mark.parametrize(
    "placement_kind, rank, held",
    [("linear", 0, (0, 1, 2)), ("linear", 1, (3, 4)),
     ("round_robin", 0, (0, 2, 4)), ("round_robin", 1, (1, 3))],
)
def test_qwen3_moe_expert_parallel(tmp_path, placement_kind, rank, held):
    t = qwen_tensors(QWEN3)
    # tp 2 as well: attention is tp-sharded, but under EP the experts are held whole (Tm = 1)
    placement = Placement(layer_partition=(2,), tp_size=2, tp_rank=1, ep_size=2, ep_rank=rank,
                          expert_placement=placement_kind)
    _, loaded, s = load(tmp_path, QWEN3, placement, t, files=2)
    assert_complete(loaded, s)
    w13, w2 = s["model.layers.1.mlp.experts.w13_weight"], s["model.layers.1.mlp.experts.w2_weight"]
    assert w13.shape == (len(held), 8, 8) and w2.shape == (len(held), 8, 4)
    for j, e in enumerate(held):
        assert torch.equal(w13[j, :4], expert(t, 1, e, "gate_proj"))
        assert torch.equal(w13[j, 4:], expert(t, 1, e, "up_proj"))
        assert torch.equal(w2[j], expert(t, 1, e, "down_proj"))
    assert torch.equal(s["model.layers.1.mlp.gate.weight"], t["model.layers.1.mlp.gate.weight"])
    q = "model.layers.1.self_attn."
    assert torch.equal(s[q + "q_norm.weight"], t[q + "q_norm.weight"])
    assert torch.equal(s[q + "qkv_proj.weight"][:4], t[q + "q_proj.weight"][4:8])  # heads 2, 3
    # the dense layer 0: intermediate 6 over tp 2, rank 1 rows [3, 6)
    d = "model.layers.0.mlp."
    assert torch.equal(s[d + "gate_up_proj.weight"],
                       torch.cat([t[d + "gate_proj.weight"][3:6], t[d + "up_proj.weight"][3:6]]))
    assert not any("experts" in n for n in s if n.startswith("model.layers.0."))


@pytest.mark.parametrize("rank", [0, 1])
def test_qwen3_moe_tp2_without_ep(tmp_path, rank):
    t = qwen_tensors(QWEN3)
    _, loaded, s = load(tmp_path, QWEN3, Placement.single(QWEN3, 2, rank), t)
    assert_complete(loaded, s)
    w13, w2 = s["model.layers.1.mlp.experts.w13_weight"], s["model.layers.1.mlp.experts.w2_weight"]
    assert w13.shape == (5, 4, 8) and w2.shape == (5, 8, 2)
    rows = slice(2 * rank, 2 * rank + 2)  # Im = 4 over Tm = 2
    for e in range(5):
        assert torch.equal(w13[e], torch.cat([expert(t, 1, e, "gate_proj")[rows],
                                              expert(t, 1, e, "up_proj")[rows]]))
        assert torch.equal(w2[e], expert(t, 1, e, "down_proj")[:, rows])


@pytest.mark.parametrize("placement", [
    Placement(layer_partition=(2,), tp_size=2, tp_rank=1),
    Placement(layer_partition=(2,), ep_size=3, ep_rank=1, expert_placement="round_robin"),
])
def test_fused_3d_checkpoint_equals_per_expert(tmp_path, placement):
    per_expert = qwen_tensors(QWEN3, seed=3)
    fused = qwen_tensors(QWEN3, seed=3, fused=True)
    assert "model.layers.1.mlp.experts.gate_up_proj" in fused
    _, loaded_a, a = load(tmp_path / "a", QWEN3, placement, per_expert)
    _, loaded_b, b = load(tmp_path / "b", QWEN3, placement, fused)
    assert_complete(loaded_a, a)
    assert_complete(loaded_b, b)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_missing_local_expert_shard_is_reported_nonlocal_is_not(tmp_path):
    t = qwen_tensors(QWEN3)
    placement = Placement(layer_partition=(2,), ep_size=2, ep_rank=1)  # linear: experts 3, 4
    names = [n for n in t if n != "model.layers.1.mlp.experts.0.up_proj.weight"]  # not local
    _, loaded, s = load(tmp_path / "a", QWEN3, placement, t, names=names)
    assert_complete(loaded, s)
    names = [n for n in t if n != "model.layers.1.mlp.experts.4.up_proj.weight"]
    _, loaded, s = load(tmp_path / "b", QWEN3, placement, t, names=names)
    assert set(s) - loaded == {"model.layers.1.mlp.experts.w13_weight"}
    names = [n for n in t if n != "model.layers.1.mlp.experts.3.down_proj.weight"]
    _, loaded, s = load(tmp_path / "c", QWEN3, placement, t, names=names)
    assert set(s) - loaded == {"model.layers.1.mlp.experts.w2_weight"}


def test_expert_id_out_of_range_is_an_error(tmp_path):
    t = qwen_tensors(QWEN3)
    t["model.layers.1.mlp.experts.5.gate_proj.weight"] = torch.zeros(4, 8)
    with pytest.raises(ValueError, match="expert 5"):
        load(tmp_path, QWEN3, Placement.single(QWEN3), t)


def test_moe_weight_loader_calling_convention():
    placement = Placement(layer_partition=(2,), ep_size=2, ep_rank=1,
                          expert_placement="round_robin")
    layer = FusedMoE(5, 8, 4, placement, torch.float32)
    assert layer.local_expert_ids == (1, 3)
    w13 = layer.w13_weight
    gate = torch.randn(4, 8)
    with pytest.raises(TypeError):  # shard_id and expert_id are keyword-only
        w13.weight_loader(w13, gate, "x", "w1", 3)
    kw = {"shard_id": "w1", "return_success": True}
    assert w13.weight_loader(w13, gate, "x", expert_id=2, **kw) is False
    assert torch.isnan(w13).all()  # a non-local expert writes nothing
    assert w13.weight_loader(w13, gate, "x", shard_id="w1", expert_id=2) is None
    assert w13.weight_loader(w13, gate, "x", expert_id=3, **kw) is True
    assert torch.equal(w13[1, :4], gate) and torch.isnan(w13[1, 4:]).all()
    with pytest.raises(ValueError):
        w13.weight_loader(w13, torch.randn(8, 4), "x", shard_id="w2", expert_id=3)
    with pytest.raises(ValueError):
        w13.weight_loader(w13, gate, "x", shard_id="w1", expert_id=5)


def test_qwen2_moe_shared_expert_tp2(tmp_path):
    t = qwen_tensors(QWEN2)
    _, loaded, s = load(tmp_path, QWEN2, Placement.single(QWEN2, 2, 0), t)
    assert_complete(loaded, s)
    p, a = "model.layers.1.mlp.", "model.layers.1.self_attn."
    # shared expert Is = 6 over tp 2, rank 0: rows [0, 3) of gate and of up, down columns [0, 3)
    assert torch.equal(s[p + "shared_expert.gate_up_proj.weight"],
                       torch.cat([t[p + "shared_expert.gate_proj.weight"][0:3],
                                  t[p + "shared_expert.up_proj.weight"][0:3]]))
    assert torch.equal(s[p + "shared_expert.down_proj.weight"],
                       t[p + "shared_expert.down_proj.weight"][:, 0:3])
    assert s[p + "shared_expert_gate.weight"].shape == (1, 8)
    assert torch.equal(s[p + "shared_expert_gate.weight"], t[p + "shared_expert_gate.weight"])
    assert not any(n.startswith("model.layers.0.mlp.shared_expert") for n in s)  # dense layer
    # q/k/v bias always (rank 0: q heads 0, 1 = rows [0, 4); kv head 0 = rows [0, 2)), o never
    assert torch.equal(s[a + "qkv_proj.bias"], torch.cat([t[a + "q_proj.bias"][0:4],
                                                          t[a + "k_proj.bias"][0:2],
                                                          t[a + "v_proj.bias"][0:2]]))
    assert a + "o_proj.bias" not in s and a + "q_norm.weight" not in s
    assert torch.equal(s[p + "experts.w2_weight"][3], t[p + "experts.3.down_proj.weight"][:, 0:2])


def test_qwen2_moe_rejects_inconsistent_head_dim():
    with pytest.raises(ValueError, match="head_dim"):
        loader.build(with_(QWEN2, head_dim=4), Placement.single(QWEN2))


@pytest.mark.parametrize("arch", [QWEN2, QWEN3], ids=lambda a: a.family)
def test_lora_wrapped_names_values_and_weight_sync(tmp_path, arch):
    wrapped = with_(arch, lora={"targets": ALL_TARGETS, "rank": 2})
    placement = Placement(layer_partition=(2,), tp_size=2, tp_rank=1, ep_size=2, ep_rank=0)
    t = qwen_tensors(arch, seed=0)
    _, loaded_plain, plain = load(tmp_path / "plain", arch, placement, t)
    model, loaded, s = load(tmp_path / "wrapped", wrapped, placement, t)
    assert_complete(loaded, s)
    expected = {
        "model.layers.1.self_attn.qkv_proj.base_layer.weight",
        "model.layers.1.self_attn.o_proj.base_layer.weight",
        "model.layers.0.mlp.gate_up_proj.base_layer.weight",
        "model.layers.0.mlp.down_proj.base_layer.weight",
        "model.layers.1.mlp.experts.base_layer.w13_weight",
        "model.layers.1.mlp.experts.base_layer.w2_weight",
    }
    if arch.family == "qwen2_moe":
        expected |= {"model.layers.1.mlp.shared_expert.gate_up_proj.base_layer.weight",
                     "model.layers.1.mlp.shared_expert.down_proj.base_layer.weight",
                     "model.layers.1.self_attn.qkv_proj.base_layer.bias"}
    assert expected <= set(s)
    assert not any("lora" in n for n in s)  # A/B are buffers, not base weights
    assert any("lora_a" in n for n, _ in model.named_buffers())
    assert {n.replace("base_layer.", "") for n in s} == set(plain)
    for name, value in s.items():
        assert torch.equal(value, plain[name.replace("base_layer.", "")]), name
    assert isinstance(model.model.layers[1].mlp.experts, LoRAWrapper)
    assert "model.layers.1.mlp.gate.weight" in s  # the router is never wrapped

    # weight sync: a second checkpoint into the same wrapped model replaces every base weight
    t2 = qwen_tensors(arch, seed=7)
    _, loaded2, s2 = load(tmp_path / "sync", wrapped, placement, t2, model=model)
    _, _, fresh = load(tmp_path / "fresh", wrapped, placement, t2)
    assert loaded2 == loaded
    for name in s2:
        assert torch.equal(s2[name], fresh[name]), name


def test_lora_fused_3d_checkpoint(tmp_path):
    wrapped = with_(QWEN3, lora={"targets": ["experts"]})
    placement = Placement.single(QWEN3, 2, 0)
    _, loaded, s = load(tmp_path / "a", wrapped, placement, qwen_tensors(QWEN3, 2, fused=True))
    assert_complete(loaded, s)
    _, _, plain = load(tmp_path / "b", QWEN3, placement, qwen_tensors(QWEN3, 2))
    assert torch.equal(s["model.layers.1.mlp.experts.base_layer.w13_weight"],
                       plain["model.layers.1.mlp.experts.w13_weight"])


def test_expert_mapping_without_base_layer_fails_under_lora(tmp_path):
    """Seed PR #37114: an expert table hard-coded to ``experts.w13_`` misses ``base_layer.``."""

    class HardCodedMapping(Qwen3MoeForCausalLM):
        def expert_params_mapping(self):
            return [(("experts.w2_" if s == "w2" else "experts.w13_"), f"experts.{e}.{p}.", s, e)
                    for e in range(self.arch.moe.num_experts)
                    for p, s in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2"))]

    wrapped = with_(QWEN3, lora={"targets": ["experts"]})
    placement = Placement.single(QWEN3)
    t = qwen_tensors(QWEN3)
    load(tmp_path / "a", QWEN3, placement, t, model=HardCodedMapping(QWEN3, placement))  # fine
    with pytest.raises(ValueError, match=r"mlp\.experts\.w(13|2)_weight"):
        load(tmp_path / "b", wrapped, placement, t, model=HardCodedMapping(wrapped, placement))


def test_llama_lora_and_gpt2_lora_rejected(tmp_path):
    arch = Arch("llama", hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4,
                intermediate_size=8, vocab_size=64, attention_bias=True)
    wrapped = with_(arch, lora={"targets": ["qkv", "o", "down"], "rank": 3})
    t = llama_tensors(arch)
    _, loaded, s = load(tmp_path, wrapped, Placement.single(arch), t)
    assert_complete(loaded, s)
    assert "model.layers.0.self_attn.o_proj.base_layer.bias" in s
    assert "model.layers.0.mlp.gate_up_proj.weight" in s  # not targeted
    assert torch.equal(s["model.layers.0.mlp.down_proj.base_layer.weight"],
                       t["model.layers.0.mlp.down_proj.weight"])
    gpt2 = Arch("gpt2", 8, 1, 2, 2, 4, 8, 64, lora=LoRA(targets=("qkv",)))
    with pytest.raises(ValueError, match="LoRA"):
        loader.build(gpt2, Placement.single(gpt2))


@pytest.mark.parametrize("arch", [QWEN3, QWEN2], ids=lambda a: a.family)
def test_pp_last_rank_tied_holds_embedding(tmp_path, arch):
    tied = with_(arch, tie_word_embeddings=True)
    t = qwen_tensors(tied)  # still holds an lm_head.weight, which a tied model skips
    placement = Placement(layer_partition=(1, 1), pp_size=2, pp_rank=1, ep_size=2, ep_rank=1)
    model, loaded, s = load(tmp_path, tied, placement, t)
    assert_complete(loaded, s)
    assert {n.split(".")[2] for n in s if n.startswith("model.layers.")} == {"1"}
    assert torch.equal(s["model.embed_tokens.weight"][:70], t["model.embed_tokens.weight"])
    assert torch.equal(s["model.embed_tokens.weight"][70:], torch.zeros(58, 8))
    assert model.lm_head.weight is s["model.embed_tokens.weight"]
    assert "lm_head.weight" not in s and "model.norm.weight" in s


def test_pp_first_rank_untied(tmp_path):
    t = qwen_tensors(QWEN3)
    placement = Placement(layer_partition=(1, 1), pp_size=2, pp_rank=0)
    _, loaded, s = load(tmp_path, QWEN3, placement, t)
    assert_complete(loaded, s)
    assert {n.split(".")[2] for n in s if n.startswith("model.layers.")} == {"0"}
    assert "model.embed_tokens.weight" in s
    assert "model.norm.weight" not in s and "lm_head.weight" not in s
