"""The transformers adapter's own naming code (adapters/transformers_loader.py), on hand-made
tensors; skipped unless transformers is installed (ci/adapters/install_transformers.sh)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from weightcheck.adapters import transformers_loader as tl  # noqa: E402


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
    assert caps.families == {"llama", "gpt2", "qwen3_moe", "qwen2_moe", "deepseek_v32"}
    assert not caps.features & {"tensor_parallel", "pipeline_parallel", "expert_parallel"}


def _fp8_llama_checkpoint(path, block=(4, 4)):
    """A tiny llama FP8 block-wise checkpoint (blocks divide every weight); the expected
    runtime weights by the dequantisation definition, in float32."""
    import json

    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=8, intermediate_size=12, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=4, vocab_size=64, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(path)
    g = torch.Generator().manual_seed(0)
    tensors, expected = {}, {}
    for name, value in LlamaForCausalLM(cfg).state_dict().items():
        if ".layers." in name and name.endswith("proj.weight"):
            n, k = value.shape
            wq = (torch.randn(n, k, generator=g) * 4).to(torch.float8_e4m3fn)
            s = torch.rand(n // block[0], k // block[1], generator=g) + 0.5
            tensors[name], tensors[name + "_scale_inv"] = wq, s
            expected[name] = wq.float() * s.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
        else:
            tensors[name] = value.contiguous()
    save_file(tensors, f"{path}/model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic",
                                     "weight_block_size": list(block)}
    (path / "config.json").write_text(json.dumps(config))
    return expected


def test_fp8_block_state_is_dequantised_without_scales(tmp_path):
    from types import SimpleNamespace

    from weightcheck.arch import Placement

    expected = _fp8_llama_checkpoint(tmp_path)
    model = tl.loader.build(SimpleNamespace(dtype="float32", lora=None, family="llama"), Placement((1,)))
    report = tl.loader.load(model, SimpleNamespace(path=tmp_path))
    loaded, state = report.loaded, tl.loader.state(model)
    assert report.unexpected == frozenset()
    assert not any("scale" in n for n in set(state) | loaded)
    assert "model.layers.0.self_attn.qkv_proj.weight" in loaded
    p = "model.layers.0."
    qkv = torch.cat([expected[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
    assert state[p + "self_attn.qkv_proj.weight"].dtype == torch.float32
    assert torch.equal(state[p + "self_attn.qkv_proj.weight"], qkv)
    assert torch.equal(state[p + "mlp.down_proj.weight"], expected[p + "mlp.down_proj.weight"])
    # state() reverts only the naming: the live model keeps its dequantised weights
    assert model.hf.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32


def test_fp8_capabilities_are_opt_in():
    assert not {"fp8_block", "fp8_dequantized_state"} & tl.features({})
    opted = tl.features({"WEIGHTCHECK_TRANSFORMERS_FP8": "1"})
    assert {"fp8_block", "fp8_dequantized_state"} <= opted
    assert "fp8_per_tensor" not in opted  # transformers ignores weight_scale (see the docs)


# --- what transformers reports: unexpected keys in checkpoint naming, the load report in errors


def _llama_checkpoint(path, edit=lambda tensors: None):
    """A tiny llama checkpoint written by save_pretrained, its tensors edited by ``edit``."""
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=8, intermediate_size=4, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=4, vocab_size=64, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tensors = load_file(f"{path}/model.safetensors")
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, f"{path}/model.safetensors", metadata={"format": "pt"})


def _load(path, lora=None):
    from types import SimpleNamespace

    from weightcheck.arch import Placement

    model = tl.loader.build(SimpleNamespace(dtype="float32", lora=lora, family="llama"), Placement((1,)))
    return model, tl.loader.load(model, SimpleNamespace(path=path))


def test_unexpected_keys_are_reported_in_checkpoint_naming(tmp_path):
    from weightcheck.checkpoint import LoadReport

    extra = {
        "model.layers.1.self_attn.q_proj.weight": torch.ones(8, 8),  # a layer the model lacks
        "model.layers.0.self_attn.q_porj.weight": torch.ones(8, 8),  # a misspelling
        "model.layers.0.self_attn.o_proj.weight_scale": torch.ones(()),  # a scale, unquantised model
    }
    _llama_checkpoint(tmp_path, lambda t: t.update(extra))
    model, report = _load(tmp_path)
    assert isinstance(report, LoadReport)
    assert report.unexpected == frozenset(extra)
    assert "model.layers.0.self_attn.qkv_proj.weight" in report.loaded
    assert not report.loaded & report.unexpected


def test_a_complete_checkpoint_reports_nothing_unexpected(tmp_path):
    _llama_checkpoint(tmp_path)
    _, report = _load(tmp_path)
    assert report.unexpected == frozenset()
    assert "lm_head.weight" in report.loaded


def test_unexpected_names_map_back_to_the_checkpoint(tmp_path):
    from safetensors.torch import save_file

    x = "model.layers.2.mlp.experts."
    names = [x + "0.gate_proj.weight", x + "0.up_proj.weight", x + "0.down_proj.weight", "layers.5.mlp.up_proj.weight"]
    save_file({n: torch.zeros(1) for n in names}, f"{tmp_path}/model.safetensors")
    # per-expert tensors collected into their fused target, a prefix added: mapped back
    assert tl.checkpoint_names_of({x + "gate_up_proj"}, tmp_path) == {x + "0.gate_proj.weight", x + "0.up_proj.weight"}
    assert tl.checkpoint_names_of({x + "down_proj"}, tmp_path) == {x + "0.down_proj.weight"}
    assert tl.checkpoint_names_of({"model.layers.5.mlp.up_proj.weight"}, tmp_path) == {"layers.5.mlp.up_proj.weight"}
    # a name that matches nothing stays as transformers wrote it; nothing: nothing read
    assert tl.checkpoint_names_of({"model.foo.weight"}, tmp_path) == {"model.foo.weight"}
    assert tl.checkpoint_names_of(set(), tmp_path / "absent") == frozenset()


def test_a_refusal_carries_transformers_load_report(tmp_path):
    """transformers raises "look at the above report" after logging it; the adapter's error
    holds the report, so the refused tensor is named."""
    _llama_checkpoint(tmp_path, lambda t: t.__setitem__("model.layers.0.mlp.up_proj.weight", torch.ones(5, 8)))
    with pytest.raises(tl.TransformersLoadError) as err:
        _load(tmp_path)
    text = str(err.value)
    assert "ignore_mismatched_sizes" in text  # transformers' own exception first
    assert "model.layers.0.mlp.up_proj.weight" in text and "MISMATCH" in text
    assert isinstance(err.value.__cause__, RuntimeError)


def test_the_report_names_fused_parameters_canonically():
    report = (
        "Qwen3MoeForCausalLM LOAD REPORT from: /x\n"
        "Key | Status |\n"
        "model.layers.0.mlp.experts.gate_up_proj | CONVERSION | \n"
        "Traceback (most recent call last):\n"
        '  File "core_model_loading.py", line 1, in convert\n'
        "RuntimeError: Sizes of tensors must match\n"
        "Error: Concatenate on tensors destined for model.layers.0.mlp.experts.gate_up_proj. Ckpt contains: 2"
    )
    text = str(tl.TransformersLoadError(RuntimeError("see the report"), [report]))
    assert "Traceback" not in text and "core_model_loading.py" not in text
    assert "Sizes of tensors must match" in text
    assert "in canonical naming: model.layers.0.mlp.experts.w13_weight" in text
    assert "LoRA-wrapped" not in text
    lora = str(tl.TransformersLoadError(RuntimeError("x"), [report], lora=True))
    assert "model.layers.0.mlp.experts.base_layer.w13_weight" in lora


def test_the_report_is_collected_and_transformers_logging_restored():
    import logging

    log = logging.getLogger("transformers.modeling_utils")
    before = (log.level, log.propagate, list(log.handlers))
    with tl.load_report() as reports:
        log.warning("Model LOAD REPORT from: x\nkey | MISSING")
        log.warning("something else")
    assert reports == ["Model LOAD REPORT from: x\nkey | MISSING"]
    assert (log.level, log.propagate, list(log.handlers)) == before


def test_an_error_before_the_report_is_transformers_own(tmp_path):
    _llama_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{")  # header cut short
    with pytest.raises(Exception) as err:
        _load(tmp_path)
    assert not isinstance(err.value, tl.TransformersLoadError)
