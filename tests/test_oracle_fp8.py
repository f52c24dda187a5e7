"""The oracle's FP8 and deepseek_v32 rules, against values worked out by hand."""

import torch

from weightcheck.fixtures.values import checkpoint_values
from weightcheck.arch import MLA, Arch, MoE, Placement, Quant
from weightcheck.reference_models.families import checkpoint_specs, family_spec
from weightcheck.reference_models.oracle import dequantize, expected_state
from weightcheck.reference_models.oracle.expected import dequantized_weights


def _state(arch, placement, fmt="default", seed=3):
    specs = checkpoint_specs(arch, fmt)
    tensors = checkpoint_values(specs, specs, arch.dtype, seed)
    return tensors, expected_state(arch, placement, tensors, fmt)


def _llama(quant, **kw):
    return Arch("llama", 8, 1, 4, 2, 4, 6, 10, quant=quant, **kw)


def test_dequantize_expands_partial_blocks_and_crops():
    w = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]).to(torch.float8_e4m3fn)
    s = torch.tensor([[2.0, 10.0], [3.0, 100.0]])
    got = dequantize(w, s, (2, 2))
    want = torch.tensor([[2.0, 4.0, 30.0], [8.0, 10.0, 60.0], [21.0, 24.0, 900.0]])
    assert torch.equal(got, want)


def test_fp8_weights_keep_their_bytes_and_per_tensor_scales_are_per_shard():
    arch = _llama(Quant("fp8_per_tensor", activation_scheme="static"))
    tensors, exp = _state(arch, Placement.single(arch, tp_size=2, tp_rank=1))
    a = "model.layers.0.self_attn."
    qkv = exp.params[a + "qkv_proj.weight"].value
    assert qkv.dtype == torch.float8_e4m3fn
    assert torch.equal(qkv[:8].view(torch.uint8), tensors[a + "q_proj.weight"][8:].view(torch.uint8))
    scales = exp.params[a + "qkv_proj.weight_scale"].value
    assert torch.equal(scales, torch.stack([tensors[a + f"{x}_proj.weight_scale"] for x in "qkv"]))
    assert exp.params[a + "o_proj.input_scale"].value.shape == (1,)
    assert a + "q_proj.input_scale" in exp.params[a + "qkv_proj.input_scale"].sources


def test_block_scales_cover_a_tp_split_that_cuts_a_block():
    arch = _llama(Quant("fp8_block", block=(3, 5)))
    tensors, exp = _state(arch, Placement.single(arch, tp_size=2, tp_rank=1))
    a = "model.layers.0.self_attn."
    # q rows 8:16 -> blocks 2:6; k and v rows 4:8 -> blocks 1:3 each
    got = exp.params[a + "qkv_proj.weight_scale_inv"].value
    want = torch.cat(
        [
            tensors[a + "q_proj.weight_scale_inv"][2:6],
            tensors[a + "k_proj.weight_scale_inv"][1:3],
            tensors[a + "v_proj.weight_scale_inv"][1:3],
        ]
    )
    assert torch.equal(got, want)
    # o_proj is row-parallel: columns 8:16 of K = 16 -> block columns 1:4 (bk = 5)
    o = exp.params[a + "o_proj.weight_scale_inv"].value
    assert torch.equal(o, tensors[a + "o_proj.weight_scale_inv"][:, 1:4])


def test_ignored_modules_stay_in_the_model_dtype_without_scales():
    mlp = "model.layers.0.mlp."
    arch = _llama(Quant("fp8_block", block=(2, 2), ignored=(mlp + "gate_proj", mlp + "up_proj")))
    specs = checkpoint_specs(arch)
    assert specs[mlp + "gate_proj.weight"].dtype is None
    assert mlp + "gate_proj.weight_scale_inv" not in specs
    _, exp = _state(arch, Placement.single(arch))
    assert exp.params[mlp + "gate_up_proj.weight"].value.dtype == torch.float32
    assert mlp + "gate_up_proj.weight_scale_inv" not in exp.params
    assert exp.params[mlp + "down_proj.weight"].value.dtype == torch.float8_e4m3fn
    config = family_spec("llama").config(arch)["quantization_config"]
    assert config["ignored_layers"] == [mlp + "gate_proj", mlp + "up_proj"]
    assert config["weight_block_size"] == [2, 2]


def test_expert_scales_per_local_expert():
    arch = Arch(
        "qwen3_moe", 8, 1, 4, 2, 4, 6, 10, moe=MoE(3, 1, 4),
        quant=Quant("fp8_per_tensor", activation_scheme="static"),
    )
    placement = Placement((1,), ep_size=2, ep_rank=1)  # linear: expert 2 only
    tensors, exp = _state(arch, placement, "per_expert")
    m = "model.layers.0.mlp.experts."
    w13 = exp.params[m + "w13_weight_scale"].value
    assert torch.equal(w13, torch.stack([tensors[m + "2.gate_proj.weight_scale"], tensors[m + "2.up_proj.weight_scale"]])[None])
    assert exp.params[m + "w2_weight_scale"].value.shape == (1,)
    assert exp.params[m + "w13_input_scale"].sources == {m + "2.gate_proj.input_scale", m + "2.up_proj.input_scale"}
    assert torch.equal(tensors[m + "2.gate_proj.input_scale"], tensors[m + "2.up_proj.input_scale"])


def test_deepseek_indexer_fuses_dequantised_wk_with_weights_proj():
    mla = MLA(6, 4, 2, 2, 3, 2, 4)
    arch = Arch("deepseek_v32", 8, 2, 2, 2, 2, 6, 10, dtype="bfloat16", mla=mla, quant=Quant("fp8_block", block=(3, 5)))
    tensors, exp = _state(arch, Placement((1, 1), pp_size=2, pp_rank=1))
    x = "model.layers.1.self_attn.indexer."
    fused = exp.params[x + "wk_weights_proj.weight"]
    wk = dequantize(tensors[x + "wk.weight"], tensors[x + "wk.weight_scale_inv"], (3, 5)).to(torch.bfloat16)
    assert torch.equal(fused.value, torch.cat([wk, tensors[x + "weights_proj.weight"]]))
    assert fused.sources == {x + "wk.weight", x + "wk.weight_scale_inv", x + "weights_proj.weight"}
    assert not any(n.startswith("model.layers.0.") for n in exp.params)  # PP rank 1 only


def test_dequantized_weights_slice_after_dequantising():
    arch = _llama(Quant("fp8_block", block=(3, 5)))
    placement = Placement.single(arch, tp_size=2, tp_rank=1)
    specs = checkpoint_specs(arch)
    tensors = checkpoint_values(specs, specs, arch.dtype, 3)
    deq = dequantized_weights(arch, placement, tensors)
    o = "model.layers.0.self_attn.o_proj."
    full = dequantize(tensors[o + "weight"], tensors[o + "weight_scale_inv"], (3, 5))
    assert torch.equal(deq[o + "weight"], full[:, 8:])


def test_dequantized_state_form_folds_scales_into_model_dtype_weights():
    arch = _llama(Quant("fp8_block", block=(3, 5)), dtype="bfloat16")
    placement = Placement.single(arch, tp_size=2, tp_rank=1)
    specs = checkpoint_specs(arch)
    tensors = checkpoint_values(specs, specs, arch.dtype, 3)
    exp = expected_state(arch, placement, tensors, dequantized=True)
    o = "model.layers.0.self_attn.o_proj."
    assert not any(n.endswith(("weight_scale_inv", "weight_scale", "input_scale")) for n in exp.params)
    full = dequantize(tensors[o + "weight"], tensors[o + "weight_scale_inv"], (3, 5))
    assert torch.equal(exp.params[o + "weight"].value, full[:, 8:].to(torch.bfloat16))
    assert exp.params[o + "weight"].sources == {o + "weight", o + "weight_scale_inv"}
