"""The vLLM adapter's name mapping and a tiny build + load (skipped without vllm installed:
``bash ci/adapters/install_vllm.sh``, then put its directory on PYTHONPATH)."""

import pytest
import torch

pytest.importorskip("vllm")

from weightcheck.adapters import vllm_loader  # noqa: E402
from weightcheck.capabilities import FEATURES  # noqa: E402
from weightcheck.families import FAMILY_NAMES  # noqa: E402


@pytest.mark.parametrize(
    "runtime, canonical",
    [
        (
            "model.layers.3.mlp.experts.routed_experts.w13_weight",
            "model.layers.3.mlp.experts.w13_weight",
        ),
        (
            "model.layers.0.mlp.experts.routed_experts.w2_weight",
            "model.layers.0.mlp.experts.w2_weight",
        ),
        ("model.layers.1.self_attn.qkv_proj.weight", "model.layers.1.self_attn.qkv_proj.weight"),
        ("model.layers.1.mlp.shared_expert_gate.weight", "model.layers.1.mlp.shared_expert_gate.weight"),
        ("transformer.h.0.attn.c_attn.bias", "transformer.h.0.attn.c_attn.bias"),
        ("lm_head.weight", "lm_head.weight"),
    ],
)
def test_canonical_name(runtime, canonical):
    assert vllm_loader.canonical_name(runtime) == canonical


def test_canonical_names_of_a_set():
    names = {"model.layers.0.mlp.experts.routed_experts.w13_weight", "model.norm.weight"}
    assert vllm_loader.canonical_names(names) == {
        "model.layers.0.mlp.experts.w13_weight",
        "model.norm.weight",
    }


def test_capabilities_are_single_rank_without_lora():
    caps = vllm_loader.loader.capabilities
    assert caps.families == {"llama", "gpt2", "qwen3_moe", "qwen2_moe"} <= set(FAMILY_NAMES)
    assert caps.features <= set(FEATURES)
    assert not caps.features & {"tensor_parallel", "pipeline_parallel", "expert_parallel", "lora"}
    assert vllm_loader.loader.name.startswith("vllm ")


def test_moe_build_and_load_maps_expert_names():
    """A tiny Qwen3-MoE through vLLM: state and loaded set both use the canonical names."""
    from weightcheck.fixtures.case import Case, CheckpointRecipe
    from weightcheck.fixtures.materialize import scratch_dir, write_case
    from weightcheck.arch import Arch, MoE, Placement
    from weightcheck.reference_models.families import checkpoint_specs

    arch = Arch("qwen3_moe", 16, 1, 2, 2, 8, 8, 40, moe=MoE(2, 1, 8))
    names = sorted(checkpoint_specs(arch, "per_expert"))
    case = Case(arch, Placement((1,)), CheckpointRecipe(0, [names], "per_expert"))
    with scratch_dir() as path:
        checkpoint = write_case(case, path)
        model = vllm_loader.loader.build(arch, case.placement)
        loaded = vllm_loader.loader.load(model, checkpoint)
        state = vllm_loader.loader.state(model)
    expert = "model.layers.0.mlp.experts.w13_weight"
    assert expert in state and expert in loaded
    assert tuple(state[expert].shape) == (2, 16, 16)
    assert not any("routed_experts" in n for n in set(state) | loaded)


def _llama_load(drop=None):
    from weightcheck.fixtures.case import Case, CheckpointRecipe
    from weightcheck.fixtures.materialize import scratch_dir, write_case
    from weightcheck.arch import Arch, Placement
    from weightcheck.reference_models.families import checkpoint_specs

    arch = Arch("llama", 16, 1, 2, 2, 8, 16, 40)
    names = sorted(n for n in checkpoint_specs(arch, "default") if n != drop)
    case = Case(arch, Placement((1,)), CheckpointRecipe(0, [names], "default"))
    with scratch_dir() as path:
        checkpoint = write_case(case, path)
        model = vllm_loader.loader.build(arch, case.placement)
        loaded = vllm_loader.loader.load(model, checkpoint)
    return model, loaded


def test_check_loaded_is_silent_after_a_complete_load():
    model, loaded = _llama_load()
    vllm_loader.loader.check_loaded(model, loaded)


def test_check_loaded_names_a_missing_norm():
    norm = "model.layers.0.input_layernorm.weight"
    model, loaded = _llama_load(drop=norm)
    with pytest.raises(ValueError, match=norm):
        vllm_loader.loader.check_loaded(model, loaded)


def test_check_loaded_is_vllms_own_check_silent_for_a_missing_linear_weight():
    """The finding in docs/adapters/vllm.md: on an unquantized model vLLM's
    track_weights_loading exempts every parameter of a module with a quant_method."""
    model, loaded = _llama_load(drop="model.layers.0.self_attn.o_proj.weight")
    assert "model.layers.0.self_attn.o_proj.weight" not in loaded
    vllm_loader.loader.check_loaded(model, loaded)  # silent: vLLM's behaviour, not the adapter's


def test_check_loaded_appends_canonical_expert_names(monkeypatch):
    """vLLM's message names ``...experts.routed_experts.w13_weight``; the canonical name is
    appended so the suite can recognise it."""
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def named_parameters(self, *args, **kwargs):
            yield "model.layers.0.mlp.experts.routed_experts.w13_weight", self.p
            yield "model.layers.0.mlp.experts.routed_experts.w13_weight_scale", self.p

    def track(self, module, loaded, quantized=False):
        raise ValueError(
            "Following weights were not initialized from checkpoint: "
            "{'model.layers.0.mlp.experts.routed_experts.w13_weight'}"
        )

    monkeypatch.setattr(DefaultModelLoader, "track_weights_loading", track)
    model = vllm_loader.VllmModel(Module(), vllm_config=_unquantized_config())
    with pytest.raises(ValueError) as err:
        vllm_loader.loader.check_loaded(model, set())
    assert "canonical names: ['model.layers.0.mlp.experts.w13_weight']" in str(err.value)


def _unquantized_config():
    class ModelConfig:
        quantization = None

    class Config:
        model_config = ModelConfig()

    return Config()


def test_fp8_is_opt_in():
    """FP8 per-tensor is declared only with WEIGHTCHECK_VLLM_FP8=1 (vLLM refuses float32 FP8)."""
    assert "fp8_per_tensor" not in vllm_loader.features({})
    assert "fp8_per_tensor" in vllm_loader.features({"WEIGHTCHECK_VLLM_FP8": "1"})
    assert "fp8_block" not in vllm_loader.features({"WEIGHTCHECK_VLLM_FP8": "1"})


def test_fp8_per_tensor_llama_loads_bytes_and_per_shard_scales():
    """bf16 FP8 llama: fp8 bytes, per-shard scales, no attention KV-cache scales in state, and
    vLLM's own check (quantized=True) silent on the complete load."""
    from weightcheck.fixtures.case import Case, CheckpointRecipe
    from weightcheck.fixtures.materialize import scratch_dir, write_case
    from weightcheck.arch import Arch, Placement, Quant
    from weightcheck.reference_models.families import checkpoint_specs

    arch = Arch("llama", 16, 1, 2, 2, 8, 16, 40, quant=Quant("fp8_per_tensor", "static"), dtype="bfloat16")
    names = sorted(checkpoint_specs(arch, "default"))
    case = Case(arch, Placement((1,)), CheckpointRecipe(0, [names], "default"))
    with scratch_dir() as path:
        checkpoint = write_case(case, path)
        model = vllm_loader.loader.build(arch, case.placement)
        loaded = vllm_loader.loader.load(model, checkpoint)
        state = vllm_loader.loader.state(model)
        q = dict(checkpoint.weights())["model.layers.0.self_attn.q_proj.weight"]
    qkv = state["model.layers.0.self_attn.qkv_proj.weight"]
    assert qkv.dtype == torch.float8_e4m3fn
    assert torch.equal(qkv[:16].view(torch.uint8), q.view(torch.uint8))
    assert tuple(state["model.layers.0.self_attn.qkv_proj.weight_scale"].shape) == (3,)
    assert not any(n.endswith(("attn.k_scale", "attn.q_scale")) for n in state)
    assert set(state) == loaded
    vllm_loader.loader.check_loaded(model, loaded)
