"""Hand-computed checks of the reference loader's FP8 quantisation and ``deepseek_v32``.

As in test_reference_loader_smoke.py, every expectation is written out by hand from
docs/runtime-layout.md ("FP8 quantisation", "``deepseek_v32``", "Completeness check"): explicit
scale entries, block rows and columns, and the dequantisation formula; nothing here uses the
oracle or the strategies.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from weightcheck.fixtures.checkpoint import write_checkpoint
from weightcheck.arch import MLA, Arch, LoRA, MoE, Placement, Quant
from weightcheck.reference_models.reference_loader import loader
from weightcheck.reference_models.reference_loader.tracking import load_session

from .test_reference_loader_moe import qwen_tensors
from .test_reference_loader_smoke import assert_complete, llama_tensors, load

FP8 = torch.float8_e4m3fn
# checkpoint modules quantised when not ignored (last name segment; never router/shared gate)
QUANTISED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
             "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "wq_b", "wk")

PER_TENSOR = Quant("fp8_per_tensor")
STATIC = Quant("fp8_per_tensor", activation_scheme="static")

LLAMA = Arch("llama", hidden_size=8, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=2,
             intermediate_size=6, vocab_size=70)


def with_(arch: Arch, **changes) -> Arch:
    return dataclasses.replace(arch, **changes)


def block(bn, bk, ignored=()):
    return Quant("fp8_block", block=(bn, bk), ignored=tuple(ignored))


def ceil(a, b):
    return -(-a // b)


def quantise(arch: Arch, tensors: dict[str, torch.Tensor], seed: int = 1) -> dict:
    """``tensors`` as an FP8 checkpoint of ``arch.quant``: each quantised module's weight in FP8
    (its values are arbitrary here) plus its scales; gate's and up's input scales equal."""
    g = torch.Generator().manual_seed(seed)
    q = arch.quant
    out = {}
    for name, w in tensors.items():
        module, _, leaf = name.rpartition(".")
        if not (leaf == "weight" and module.startswith("model.layers.")
                and module.rsplit(".", 1)[-1] in QUANTISED and arch.fp8(module)):
            out[name] = w
            continue
        out[name] = w.float().clamp(-448, 448).to(FP8)
        if q.method == "fp8_per_tensor":
            out[module + ".weight_scale"] = torch.rand((), generator=g) + 0.1
            if q.activation_scheme == "static":
                shared = module.replace(".up_proj", ".gate_proj")
                out[module + ".input_scale"] = torch.tensor(0.01 + (hash(shared) % 97) / 100)
        else:
            n, k = w.shape
            out[module + ".weight_scale_inv"] = torch.rand(
                ceil(n, q.block[0]), ceil(k, q.block[1]), generator=g) + 0.1
    return out


def same_bytes(a, b):
    return a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


# --- per-tensor -----------------------------------------------------------------------------


def test_per_tensor_static_scales_one_entry_per_shard(tmp_path):
    arch = with_(LLAMA, quant=STATIC)
    t = quantise(arch, llama_tensors(arch))
    _, loaded, s = load(tmp_path, arch, Placement.single(arch, 2, 1), t, files=3)
    assert_complete(loaded, s)
    a, m = "model.layers.1.self_attn.", "model.layers.1.mlp."
    for kind in ("weight_scale", "input_scale"):
        # not sharded: every rank holds q, k, v scales (and gate, up)
        assert torch.equal(s[a + f"qkv_proj.{kind}"],
                           torch.stack([t[a + f"{p}_proj.{kind}"] for p in "qkv"]))
        assert torch.equal(s[m + f"gate_up_proj.{kind}"],
                           torch.stack([t[m + f"gate_proj.{kind}"], t[m + f"up_proj.{kind}"]]))
        assert torch.equal(s[a + f"o_proj.{kind}"], t[a + f"o_proj.{kind}"].reshape(1))
        assert torch.equal(s[m + f"down_proj.{kind}"], t[m + f"down_proj.{kind}"].reshape(1))
    qkv = s[a + "qkv_proj.weight"]
    assert qkv.dtype == FP8 and qkv.shape == (4 + 2 + 2, 8)
    # tp 2 of 4 heads (hd 2): rank 1 q rows [4, 8), kv head 1 = rows [2, 4)
    assert same_bytes(qkv, torch.cat([t[a + "q_proj.weight"][4:8], t[a + "k_proj.weight"][2:4],
                                      t[a + "v_proj.weight"][2:4]]))
    assert same_bytes(s[a + "o_proj.weight"], t[a + "o_proj.weight"][:, 4:8])
    assert s["model.embed_tokens.weight"].dtype == torch.float32  # never quantised


def test_ignored_modules_load_unquantised(tmp_path):
    ignored = [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"] + ["model.layers.1.mlp.down_proj"]
    arch = with_(LLAMA, quant=Quant("fp8_per_tensor", ignored=tuple(ignored),
                                    ignore_key="modules_to_not_convert"))
    t = quantise(arch, llama_tensors(arch))
    assert "model.layers.0.self_attn.q_proj.weight_scale" not in t
    _, loaded, s = load(tmp_path, arch, Placement.single(arch, 2, 0), t)
    assert_complete(loaded, s)
    assert s["model.layers.0.self_attn.qkv_proj.weight"].dtype == torch.float32
    assert "model.layers.0.self_attn.qkv_proj.weight_scale" not in s
    assert "model.layers.1.mlp.down_proj.weight_scale" not in s
    assert s["model.layers.1.self_attn.qkv_proj.weight"].dtype == FP8
    assert s["model.layers.1.self_attn.qkv_proj.weight_scale"].shape == (3,)


def test_qkv_scale_needs_every_shard_scale(tmp_path):
    arch = with_(LLAMA, quant=STATIC)
    t = quantise(arch, llama_tensors(arch))
    a = "model.layers.0.self_attn."
    _, loaded, s = load(tmp_path / "a", arch, Placement.single(arch), t,
                        names=[n for n in t if n != a + "k_proj.weight_scale"])
    assert set(s) - loaded == {a + "qkv_proj.weight_scale"}
    _, loaded, s = load(tmp_path / "b", arch, Placement.single(arch), t,
                        names=[n for n in t if n != a + "v_proj.input_scale"])
    assert set(s) - loaded == {a + "qkv_proj.input_scale"}


# --- block-wise -----------------------------------------------------------------------------


def test_block_cover_on_a_tp_split_through_a_block(tmp_path):
    arch = with_(LLAMA, quant=block(3, 3))  # 3 divides neither 8 (q rows, H) nor 4 (kv rows)
    t = quantise(arch, llama_tensors(arch))
    _, loaded, s = load(tmp_path, arch, Placement.single(arch, 2, 1), t, files=2)
    assert_complete(loaded, s)
    a, m = "model.layers.0.self_attn.", "model.layers.0.mlp."
    sq, sk, sv = (t[a + f"{p}_proj.weight_scale_inv"] for p in "qkv")
    assert sq.shape == (3, 3) and sk.shape == (2, 3)
    # rank 1: q rows [4, 8) -> blocks [1, 3); k and v rows [2, 4) -> blocks [0, 2)
    assert torch.equal(s[a + "qkv_proj.weight_scale_inv"], torch.cat([sq[1:3], sk[0:2], sv[0:2]]))
    # o_proj [8, 8] row-parallel: rank 1 columns [4, 8) -> column blocks [1, 3), all 3 row blocks
    assert torch.equal(s[a + "o_proj.weight_scale_inv"], t[a + "o_proj.weight_scale_inv"][:, 1:3])
    # gate/up rows I=6 over 2: rank 1 rows [3, 6) -> block 1 only
    assert torch.equal(s[m + "gate_up_proj.weight_scale_inv"],
                       torch.cat([t[m + "gate_proj.weight_scale_inv"][1:2],
                                  t[m + "up_proj.weight_scale_inv"][1:2]]))
    # down [8, 6]: rank 1 columns [3, 6) -> column block 1
    assert torch.equal(s[m + "down_proj.weight_scale_inv"],
                       t[m + "down_proj.weight_scale_inv"][:, 1:2])


def test_block_cover_rank0_holds_the_shared_block_too(tmp_path):
    arch = with_(LLAMA, quant=block(3, 5))
    t = quantise(arch, llama_tensors(arch))
    _, loaded, s = load(tmp_path, arch, Placement.single(arch, 2, 0), t)
    assert_complete(loaded, s)
    a = "model.layers.1.self_attn."
    sq, sk, sv = (t[a + f"{p}_proj.weight_scale_inv"] for p in "qkv")
    # rank 0: q rows [0, 4) -> blocks [0, 2) (block 1 = rows [3, 6) is cut by the split)
    assert torch.equal(s[a + "qkv_proj.weight_scale_inv"], torch.cat([sq[0:2], sk[0:1], sv[0:1]]))
    # o_proj columns [0, 4) with bk = 5 -> column block 0
    assert torch.equal(s[a + "o_proj.weight_scale_inv"], t[a + "o_proj.weight_scale_inv"][:, 0:1])


QWEN3 = Arch("qwen3_moe", hidden_size=8, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=2,
             intermediate_size=6, vocab_size=70,
             moe=MoE(num_experts=3, top_k=2, moe_intermediate_size=6, dense_layers=(0,)))


def test_moe_block_scales_by_cover(tmp_path):
    arch = with_(QWEN3, quant=block(4, 3))
    t = quantise(arch, qwen_tensors(arch))
    _, loaded, s = load(tmp_path, arch, Placement.single(arch, 2, 1), t, files=2)
    assert_complete(loaded, s)
    p = "model.layers.1.mlp."
    assert s[p + "gate.weight"].dtype == torch.float32  # the router is never FP8
    w13s, w2s = s[p + "experts.w13_weight_scale_inv"], s[p + "experts.w2_weight_scale_inv"]
    # Im = 6 over tp 2: rank 1 rows [3, 6) -> blocks [0, 2) of gate and of up; H = 8 -> 3 cols
    assert w13s.shape == (3, 4, 3) and w2s.shape == (3, 2, 1)
    for e in range(3):
        x = f"{p}experts.{e}."
        assert torch.equal(w13s[e], torch.cat([t[x + "gate_proj.weight_scale_inv"][0:2],
                                               t[x + "up_proj.weight_scale_inv"][0:2]]))
        # down [8, 6]: columns [3, 6) -> column block 1 of 2
        assert torch.equal(w2s[e], t[x + "down_proj.weight_scale_inv"][:, 1:2])
        assert same_bytes(s[p + "experts.w2_weight"][e], t[x + "down_proj.weight"][:, 3:6])


def test_moe_per_tensor_static_scales_and_tracking(tmp_path):
    arch = with_(QWEN3, quant=STATIC)
    t = quantise(arch, qwen_tensors(arch))
    placement = Placement(layer_partition=(2,), ep_size=2, ep_rank=1)  # linear: expert 2
    _, loaded, s = load(tmp_path / "a", arch, placement, t)
    assert_complete(loaded, s)
    x, p = "model.layers.1.mlp.experts.2.", "model.layers.1.mlp.experts."
    assert torch.equal(s[p + "w13_weight_scale"],
                       torch.stack([t[x + "gate_proj.weight_scale"], t[x + "up_proj.weight_scale"]])[None])
    assert torch.equal(s[p + "w2_weight_scale"], t[x + "down_proj.weight_scale"].reshape(1))
    assert torch.equal(s[p + "w13_input_scale"], t[x + "gate_proj.input_scale"].reshape(1))
    assert torch.equal(s[p + "w2_input_scale"], t[x + "down_proj.input_scale"].reshape(1))
    # the up's input scale alone missing: w13_input_scale is not loaded (the gate's wrote it)
    _, loaded, s = load(tmp_path / "b", arch, placement, t,
                        names=[n for n in t if n != x + "up_proj.input_scale"])
    assert set(s) - loaded == {p + "w13_input_scale"}
    # a non-local expert's missing scale is no loss
    _, loaded, s = load(tmp_path / "c", arch, placement, t,
                        names=[n for n in t if n != "model.layers.1.mlp.experts.0.up_proj.input_scale"])
    assert_complete(loaded, s)


def test_lora_carries_scales_into_base_layer(tmp_path):
    arch = with_(QWEN3, quant=STATIC, lora=LoRA(("qkv", "o", "gate_up", "down", "experts")))
    t = quantise(arch, qwen_tensors(arch))
    model, loaded, s = load(tmp_path, arch, Placement.single(arch, 2, 0), t)
    assert_complete(loaded, s)
    for name in ("model.layers.0.self_attn.qkv_proj.base_layer.weight_scale",
                 "model.layers.0.self_attn.o_proj.base_layer.input_scale",
                 "model.layers.0.mlp.gate_up_proj.base_layer.weight_scale",
                 "model.layers.1.mlp.experts.base_layer.w13_weight_scale",
                 "model.layers.1.mlp.experts.base_layer.w2_input_scale"):
        assert name in s, name
    assert not any(".lora_" in n for n in s)
    buffers = dict(model.named_buffers())
    assert buffers["model.layers.0.self_attn.qkv_proj.lora_a_weight"].dtype == torch.float32
    assert not any("scale" in n for n in buffers)


# --- deepseek_v32 ---------------------------------------------------------------------------

MLA_DIMS = MLA(q_lora_rank=5, kv_lora_rank=4, qk_nope_head_dim=2, qk_rope_head_dim=2,
               v_head_dim=3, index_n_heads=3, index_head_dim=5)
DSV32 = Arch("deepseek_v32", hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=2,
             head_dim=4, intermediate_size=6, vocab_size=70, mla=MLA_DIMS)


def deepseek_tensors(arch: Arch, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    H, V, I, nh, m = arch.hidden_size, arch.vocab_size, arch.intermediate_size, arch.num_heads, arch.mla

    def r(*shape):
        return torch.randn(*shape, generator=g).to(arch.torch_dtype)

    t = {"model.embed_tokens.weight": r(V, H), "model.norm.weight": r(H), "lm_head.weight": r(V, H)}
    for i in range(arch.num_layers):
        p, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
        t.update({
            a + "q_a_proj.weight": r(m.q_lora_rank, H),
            a + "q_a_layernorm.weight": r(m.q_lora_rank),
            a + "q_b_proj.weight": r(nh * m.qk_head_dim, m.q_lora_rank),
            a + "kv_a_proj_with_mqa.weight": r(m.kv_lora_rank + m.qk_rope_head_dim, H),
            a + "kv_a_layernorm.weight": r(m.kv_lora_rank),
            a + "kv_b_proj.weight": r(nh * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank),
            a + "o_proj.weight": r(H, nh * m.v_head_dim),
            a + "indexer.wq_b.weight": r(m.index_n_heads * m.index_head_dim, m.q_lora_rank),
            a + "indexer.wk.weight": r(m.index_head_dim, H),
            a + "indexer.k_norm.weight": r(m.index_head_dim),
            a + "indexer.k_norm.bias": r(m.index_head_dim),
            a + "indexer.weights_proj.weight": r(m.index_n_heads, H),
            p + "mlp.gate_proj.weight": r(I, H), p + "mlp.up_proj.weight": r(I, H),
            p + "mlp.down_proj.weight": r(H, I),
            p + "input_layernorm.weight": r(H), p + "post_attention_layernorm.weight": r(H),
        })
    return t


def dequant(w, scale, bn, bk, dtype):
    n, k = w.shape
    return (w.float() * scale.repeat_interleave(bn, 0).repeat_interleave(bk, 1)[:n, :k]).to(dtype)


def test_deepseek_bf16_layout_tp2(tmp_path):
    arch = with_(DSV32, dtype="bfloat16")
    t = deepseek_tensors(arch)
    _, loaded, s = load(tmp_path, arch, Placement.single(arch, 2, 1), t, files=2)
    assert_complete(loaded, s)
    a = "model.layers.1.self_attn."
    assert torch.equal(s[a + "fused_qkv_a_proj.weight"],
                       torch.cat([t[a + "q_a_proj.weight"], t[a + "kv_a_proj_with_mqa.weight"]]))
    assert torch.equal(s[a + "q_b_proj.weight"], t[a + "q_b_proj.weight"][4:8])  # 8 rows / 2
    assert torch.equal(s[a + "kv_b_proj.weight"], t[a + "kv_b_proj.weight"][5:10])
    assert torch.equal(s[a + "o_proj.weight"], t[a + "o_proj.weight"][:, 3:6])
    assert torch.equal(s[a + "indexer.wq_b.weight"], t[a + "indexer.wq_b.weight"])
    assert torch.equal(s[a + "indexer.wk_weights_proj.weight"],
                       torch.cat([t[a + "indexer.wk.weight"], t[a + "indexer.weights_proj.weight"]]))
    assert torch.equal(s[a + "indexer.k_norm.bias"], t[a + "indexer.k_norm.bias"])
    assert "lm_head.weight" in s


FP8_DSV32 = with_(DSV32, dtype="bfloat16", quant=block(3, 3))


def test_deepseek_fp8_block_and_wk_dequantised(tmp_path):
    arch = FP8_DSV32
    t = quantise(arch, deepseek_tensors(arch))
    _, loaded, s = load(tmp_path, arch, Placement.single(arch, 2, 0), t, files=3)
    assert_complete(loaded, s)
    a = "model.layers.0.self_attn."
    fused = s[a + "fused_qkv_a_proj.weight"]
    assert fused.dtype == FP8 and fused.shape == (5 + 6, 8)
    # replicated, block cover of the full tensors: q_a [5, 8] -> 2x3, kv_a [6, 8] -> 2x3
    assert torch.equal(s[a + "fused_qkv_a_proj.weight_scale_inv"],
                       torch.cat([t[a + "q_a_proj.weight_scale_inv"],
                                  t[a + "kv_a_proj_with_mqa.weight_scale_inv"]]))
    # q_b [8, 5] column-parallel rank 0: rows [0, 4) -> blocks [0, 2)
    assert torch.equal(s[a + "q_b_proj.weight_scale_inv"], t[a + "q_b_proj.weight_scale_inv"][0:2])
    # kv_b [10, 4]: rows [0, 5) -> blocks [0, 2); o_proj [8, 6]: columns [0, 3) -> block 0
    assert torch.equal(s[a + "kv_b_proj.weight_scale_inv"], t[a + "kv_b_proj.weight_scale_inv"][0:2])
    assert torch.equal(s[a + "o_proj.weight_scale_inv"], t[a + "o_proj.weight_scale_inv"][:, 0:1])
    assert torch.equal(s[a + "indexer.wq_b.weight_scale_inv"], t[a + "indexer.wq_b.weight_scale_inv"])
    wkp = s[a + "indexer.wk_weights_proj.weight"]
    assert wkp.dtype == torch.bfloat16 and "indexer.wk_weights_proj.weight_scale_inv" not in s
    expected = dequant(t[a + "indexer.wk.weight"], t[a + "indexer.wk.weight_scale_inv"], 3, 3,
                       torch.bfloat16)
    assert torch.equal(wkp[:5], expected)
    assert torch.equal(wkp[5:], t[a + "indexer.weights_proj.weight"])


def test_deepseek_wk_scale_before_weight_in_separate_calls(tmp_path):
    arch = FP8_DSV32
    t = quantise(arch, deepseek_tensors(arch))
    a = "model.layers.1.self_attn.indexer."
    model = loader.build(arch, Placement.single(arch))
    target = a + "wk_weights_proj.weight"
    rest = [(n, w) for n, w in t.items() if not n.startswith(a + "wk.")]
    with load_session(model):
        first = model.load_weights([(a + "wk.weight_scale_inv", t[a + "wk.weight_scale_inv"])] + rest)
        assert target not in first  # the scale waits for its weight
        assert torch.isnan(model.get_parameter(target)[:5].float()).all()
        second = model.load_weights([(a + "wk.weight", t[a + "wk.weight"])])
    assert target in second
    expected = dequant(t[a + "wk.weight"], t[a + "wk.weight_scale_inv"], 3, 3, torch.bfloat16)
    assert torch.equal(model.get_parameter(target)[:5], expected)
    # the same through load(): scale in the first file, weight in the last
    names = [a + "wk.weight_scale_inv"] + [n for n, _ in rest] + [a + "wk.weight"]
    ckpt = write_checkpoint(tmp_path / "ckpt", {}, [names[:1], names[1:-1], names[-1:]], t)
    model = loader.build(arch, Placement.single(arch))
    loaded = loader.load(model, ckpt)
    state = dict(model.named_parameters())
    assert_complete(loaded, state)
    assert torch.equal(state[target][:5], expected)


@pytest.mark.parametrize("scale_last", [True, False], ids=["scale last", "weight last"])
def test_deepseek_wk_scale_of_the_wrong_shape_is_refused_by_its_name(tmp_path, scale_last):
    """The dequantisation waits for the pair; its error names the scale tensor that is wrong,
    whichever of the two came last (found by the suite's wrong_shape on the reference loader:
    the message said "...indexer.wk.weight weight_scale_inv", naming neither)."""
    arch = FP8_DSV32
    t = quantise(arch, deepseek_tensors(arch))
    a = "model.layers.1.self_attn.indexer."
    t[a + "wk.weight_scale_inv"] = torch.cat([t[a + "wk.weight_scale_inv"]] * 2)
    pair = [a + "wk.weight", a + "wk.weight_scale_inv"]
    order = pair if scale_last else pair[::-1]
    rest = [n for n in t if n not in pair]
    model = loader.build(arch, Placement.single(arch))
    with load_session(model), pytest.raises(ValueError, match=r"indexer\.wk\.weight_scale_inv: checkpoint tensor has shape"):
        model.load_weights([(n, t[n]) for n in rest + order])


def test_deepseek_wk_without_its_scale_is_not_loaded(tmp_path):
    arch = FP8_DSV32
    t = quantise(arch, deepseek_tensors(arch))
    a = "model.layers.0.self_attn.indexer."
    model, loaded, s = load(tmp_path, arch, Placement.single(arch), t,
                            names=[n for n in t if n != a + "wk.weight_scale_inv"], files=2)
    assert set(s) - loaded == {a + "wk_weights_proj.weight"}
    assert model._pending_wk == {}  # the lone half is dropped at the end of the load
    with pytest.raises(ValueError, match=r"wk_weights_proj\.weight"):
        loader.check_loaded(model, loaded)


def test_deepseek_pp_rank_without_layer_0(tmp_path):
    arch = with_(FP8_DSV32, tie_word_embeddings=True)
    t = quantise(arch, deepseek_tensors(arch))
    placement = Placement(layer_partition=(1, 1), pp_size=2, pp_rank=1, tp_size=2, tp_rank=1)
    model, loaded, s = load(tmp_path, arch, placement, t, files=2)
    assert_complete(loaded, s)
    assert not any(n.startswith("model.layers.0.") for n in s)
    assert "model.embed_tokens.weight" in s and "model.norm.weight" in s  # tied: last rank
    loader.check_loaded(model, loaded)


def test_deepseek_ignored_modules(tmp_path):
    a = "model.layers.0.self_attn."
    ignored = [a + "q_a_proj", a + "kv_a_proj_with_mqa", a + "indexer.wk", a + "o_proj"]
    arch = with_(DSV32, quant=block(4, 4, ignored))
    t = quantise(arch, deepseek_tensors(arch))
    _, loaded, s = load(tmp_path, arch, Placement.single(arch), t)
    assert_complete(loaded, s)
    assert s[a + "fused_qkv_a_proj.weight"].dtype == torch.float32
    assert a + "fused_qkv_a_proj.weight_scale_inv" not in s
    assert torch.equal(s[a + "indexer.wk_weights_proj.weight"][:5], t[a + "indexer.wk.weight"])
    assert s["model.layers.1.self_attn.o_proj.weight"].dtype == FP8


# --- check_loaded, process_weights_after_loading, linear_forward -------------------------------


def test_check_loaded_names_missing_bias_of_quantised_o_proj(tmp_path):
    arch = with_(LLAMA, attention_bias=True, quant=PER_TENSOR)
    t = quantise(arch, llama_tensors(arch))
    missing = "model.layers.1.self_attn.o_proj.bias"
    model, loaded, s = load(tmp_path / "a", arch, Placement.single(arch, 2, 1), t,
                            names=[n for n in t if n != missing])
    assert set(s) - loaded == {missing}
    with pytest.raises(ValueError, match=r"not initialized from checkpoint: \['model\.layers\.1"
                                         r"\.self_attn\.o_proj\.bias'\]"):
        loader.check_loaded(model, loaded)
    model, loaded, _ = load(tmp_path / "b", arch, Placement.single(arch, 2, 1), t)
    assert loader.check_loaded(model, loaded) is None


def test_check_loaded_names_missing_scale(tmp_path):
    arch = with_(QWEN3, quant=block(4, 4))
    t = quantise(arch, qwen_tensors(arch))
    missing = "model.layers.1.mlp.experts.1.down_proj.weight_scale_inv"
    model, loaded, _ = load(tmp_path, arch, Placement.single(arch), t,
                            names=[n for n in t if n != missing])
    with pytest.raises(ValueError, match=r"experts\.w2_weight_scale_inv"):
        loader.check_loaded(model, loaded)


def dequantised_weight(t, module, quant, rows, cols=slice(None), dtype=torch.float32):
    w = t[module + ".weight"]
    if w.dtype != FP8:
        return w[rows, cols].float()
    if quant.method == "fp8_per_tensor":
        full = (w.float() * t[module + ".weight_scale"]).to(dtype)
    else:
        full = dequant(w, t[module + ".weight_scale_inv"], *quant.block, dtype)
    return full[rows, cols].float()


@pytest.mark.parametrize("quant", [STATIC, block(3, 5)])
def test_linear_forward_before_and_after_processing(tmp_path, quant):
    arch = with_(LLAMA, attention_bias=True, quant=quant)
    t = quantise(arch, llama_tensors(arch))
    model, loaded, s = load(tmp_path, arch, Placement.single(arch, 2, 1), t)
    assert_complete(loaded, s)
    a, m = "model.layers.0.self_attn.", "model.layers.0.mlp."
    # rank 1: q rows [4, 8), kv rows [2, 4); gate/up rows [3, 6); o and down columns [4, 8), [3, 6)
    w_qkv = torch.cat([dequantised_weight(t, a + "q_proj", quant, slice(4, 8)),
                       dequantised_weight(t, a + "k_proj", quant, slice(2, 4)),
                       dequantised_weight(t, a + "v_proj", quant, slice(2, 4))])
    b_qkv = torch.cat([t[a + "q_proj.bias"][4:8], t[a + "k_proj.bias"][2:4], t[a + "v_proj.bias"][2:4]])
    w_gu = torch.cat([dequantised_weight(t, m + "gate_proj", quant, slice(3, 6)),
                      dequantised_weight(t, m + "up_proj", quant, slice(3, 6))])
    cases = {
        a + "qkv_proj": (torch.randn(5, 8), w_qkv, b_qkv),
        a + "o_proj": (torch.randn(5, 4),
                       dequantised_weight(t, a + "o_proj", quant, slice(None), slice(4, 8)),
                       t[a + "o_proj.bias"]),
        m + "gate_up_proj": (torch.randn(5, 8), w_gu, None),
        m + "down_proj": (torch.randn(5, 3),
                          dequantised_weight(t, m + "down_proj", quant, slice(None), slice(3, 6)),
                          None),
    }
    for phase in ("before", "after"):
        if phase == "after":
            loader.process_weights_after_loading(model)
        for name, (x, w, b) in cases.items():
            expected = x @ w.t() + (0 if b is None else b)
            got = loader.linear_forward(model, name, x)
            assert got.dtype == torch.float32 and got.shape == expected.shape
            if phase == "before":
                # the dequantised weight is exactly the document's: only matmul rounding differs
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            else:
                # per-tensor fused layers were requantised to one scale: FP8 rounding (3 mantissa
                # bits, relative step <= 2^-3 of each weight) on top
                tol = 0.07 * (x.abs() @ w.abs().t()) + 1e-5
                assert ((got - expected).abs() <= tol).all(), name
    state = dict(model.named_parameters())
    if quant.method == "fp8_per_tensor":
        # in place: every shard's scale (and input scale) set to the max, shapes kept
        top = torch.stack([t[a + f"{p}_proj.weight_scale"] for p in "qkv"]).max()
        assert torch.equal(state[a + "qkv_proj.weight_scale"], top.expand(3))
        assert state[a + "qkv_proj.input_scale"].unique().numel() == 1
    else:  # block: kept as is
        # rank 1: q rows [4, 8) -> 2 blocks of 3, k and v rows [2, 4) -> 2 blocks each
        assert state[a + "qkv_proj.weight_scale_inv"].shape == (2 + 2 + 2, 2)


def test_linear_forward_under_lora_and_deepseek_indexer(tmp_path):
    arch = with_(LLAMA, quant=PER_TENSOR, lora=LoRA(("qkv",)))
    t = quantise(arch, llama_tensors(arch))
    model, _, _ = load(tmp_path / "a", arch, Placement.single(arch), t)
    a = "model.layers.1.self_attn."
    x = torch.randn(3, 8)
    w = torch.cat([dequantised_weight(t, a + f"{p}_proj", PER_TENSOR, slice(None)) for p in "qkv"])
    torch.testing.assert_close(loader.linear_forward(model, a + "qkv_proj", x), x @ w.t())

    arch = FP8_DSV32
    t = quantise(arch, deepseek_tensors(arch))
    model, _, s = load(tmp_path / "b", arch, Placement.single(arch), t)
    name = "model.layers.0.self_attn.indexer.wk_weights_proj"
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    torch.testing.assert_close(loader.linear_forward(model, name, x),
                               x.float() @ s[name + ".weight"].float().t())


def test_load_calls_load_weights_once_per_file_and_shares_the_shard_record(tmp_path):
    arch = with_(LLAMA, quant=STATIC)
    t = quantise(arch, llama_tensors(arch))
    a = "model.layers.0.self_attn."
    # q, k and v (and their scales) each in a file of their own
    names = [n for n in t if not n.startswith((a + "k_proj", a + "v_proj"))]
    files = [names, [n for n in t if n.startswith(a + "k_proj")],
             [n for n in t if n.startswith(a + "v_proj")]]
    ckpt = write_checkpoint(tmp_path / "ckpt", {}, files, t)
    model = loader.build(arch, Placement.single(arch))
    calls = []
    original = model.load_weights
    model.load_weights = lambda weights: calls.append(1) or original(weights)
    loaded = loader.load(model, ckpt)
    assert len(calls) == 3
    assert_complete(loaded, dict(model.named_parameters()))
    # a bare load_weights call per file tracks on its own: qkv_proj is never complete in one
    model = loader.build(arch, Placement.single(arch))
    bare = set()
    for names_of_file in files:
        bare |= model.load_weights((n, t[n]) for n in names_of_file)
    assert a + "qkv_proj.weight" not in bare and a + "o_proj.weight" in bare


# --- quant methods (reference_loader/quant.py) -------------------------------------------------


def test_every_format_has_its_quant_methods_and_no_layer_branches_on_the_format():
    """Each format of ``weightcheck.arch`` is one linear and one MoE method; the layers only
    delegate, so the format's name appears in quant.py alone."""
    from pathlib import Path

    from weightcheck.arch import QUANT_METHODS
    from weightcheck.reference_models.reference_loader import quant

    for fmt in (None, *QUANT_METHODS):
        q = None if fmt is None else Quant(fmt, block=(2, 2) if fmt == "fp8_block" else None)
        assert isinstance(quant.get_quant_method(q), quant.LinearMethod)
        assert isinstance(quant.get_quant_method(q, moe=True), quant.MoEMethod)
    folder = Path(quant.__file__).parent
    for file in folder.glob("*.py"):
        if file.name != "quant.py":
            text = file.read_text()
            assert ".method ==" not in text and not any(f'"{m}"' in text for m in QUANT_METHODS), file


def test_the_quant_methods_scale_loaders_are_bound_to_their_layer():
    arch = with_(LLAMA, quant=STATIC)
    model = loader.build(arch, Placement.single(arch))
    qkv = model.get_submodule("model.layers.0.self_attn.qkv_proj")
    assert type(qkv.quant_method).__name__ == "Fp8PerTensorLinearMethod" and qkv.quant is STATIC
    for param in (qkv.weight_scale, qkv.input_scale):
        param.weight_loader(param, torch.tensor(2.0), "k")
        assert param.data[1] == 2.0 and param.data[[0, 2]].isnan().all()
