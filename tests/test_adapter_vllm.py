"""The vLLM adapter's name mapping, rank layout, and tiny builds + loads at one and several
ranks through the rank pool (skipped without vllm installed: ``bash ci/adapters/install_vllm.sh``,
then put its directory on PYTHONPATH)."""

import pytest
import torch

pytest.importorskip("vllm")

from weightcheck.adapters import vllm_loader  # noqa: E402
from weightcheck.capabilities import FEATURES, PROMISES  # noqa: E402
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


def test_capabilities_are_every_family_parallelism_and_lora():
    caps = vllm_loader.loader.capabilities
    assert caps.families == set(FAMILY_NAMES)
    assert caps.features <= set(FEATURES) | set(PROMISES)
    assert {"tensor_parallel", "pipeline_parallel", "expert_parallel", "lora"} <= caps.features
    assert "in_place_reload" not in caps.features  # true in vLLM, invisible through the pool
    assert caps.placements is vllm_loader.placement_reason
    assert vllm_loader.loader.name.startswith("vllm ")


def test_the_adapter_ships_its_expectations_and_regression_cases():
    loader = vllm_loader.loader
    assert loader.expectations.name == "vllm.txt" and loader.expectations.is_file()
    assert loader.regressions.name == "vllm" and any(loader.regressions.glob("*.json"))


def _placement(tp=1, tp_rank=0, pp=1, pp_rank=0, ep=1, ep_rank=0, kind="linear", layers=4):
    from weightcheck.arch import Placement

    parts = [layers // pp] * pp
    parts[-1] += layers - sum(parts)
    return Placement(tuple(parts), tp, tp_rank, pp, pp_rank, ep, ep_rank, kind)


@pytest.mark.parametrize(
    "placement, world, rank",
    [
        (_placement(), 1, 0),
        (_placement(tp=2, tp_rank=1), 2, 1),
        (_placement(pp=2, pp_rank=1), 2, 1),
        (_placement(tp=2, tp_rank=1, pp=2, pp_rank=1), 4, 3),
        (_placement(tp=2, tp_rank=0, pp=2, pp_rank=1), 4, 2),
        (_placement(ep=2, ep_rank=1), 2, 1),  # EP 2 = DP 2 x TP 1
        (_placement(tp=2, tp_rank=1, ep=2, ep_rank=1), 2, 1),  # EP 2 = DP 1 x TP 2
        (_placement(tp=2, tp_rank=1, ep=4, ep_rank=3), 4, 3),  # EP 4 = DP 2 x TP 2
        (_placement(tp=2, tp_rank=0, ep=4, ep_rank=2, pp=2, pp_rank=1), 8, 6),
        (_placement(tp=4, tp_rank=3, pp=4, pp_rank=3), 16, 15),
    ],
)
def test_rank_layout_is_vllms(placement, world, rank):
    """ExternalDP x DP x PP x TP, EP = DP x TP: world rank = (dp * pp + pp_rank) * tp + tp_rank."""
    where = vllm_loader.layout(placement)
    assert (where.world_size, where.rank) == (world, rank)
    assert vllm_loader.placement_reason(placement) is None


@pytest.mark.parametrize(
    "placement, reason",
    [
        (_placement(tp=3, tp_rank=1), "multiple of 64"),
        (_placement(tp=2, tp_rank=0, ep=3, ep_rank=0), "not a multiple of tp size"),
        (_placement(tp=4, tp_rank=0, ep=2, ep_rank=0), "not a multiple of tp size"),
        (_placement(tp=2, tp_rank=1, ep=2, ep_rank=0), "cannot sit at tp rank 1"),
        (_placement(ep=2, ep_rank=1, kind="round_robin"), "round_robin"),
    ],
)
def test_placements_vllm_cannot_express(placement, reason):
    assert reason in vllm_loader.placement_reason(placement)
    with pytest.raises(NotImplementedError, match=reason):
        vllm_loader.loader.build(_tiny_moe(), placement)


def test_round_robin_without_expert_parallel_is_held():
    assert vllm_loader.placement_reason(_placement(tp=2, tp_rank=1, kind="round_robin")) is None


def _tiny_moe(**kwargs):
    from weightcheck.arch import Arch, MoE

    return Arch("qwen3_moe", 16, 4, 4, 2, 4, 8, 40, moe=MoE(4, 2, 8), **kwargs)


def _case(arch, placement, fmt="per_expert"):
    from weightcheck.fixtures.case import Case, CheckpointRecipe
    from weightcheck.reference_models.families import checkpoint_specs

    return Case(arch, placement, CheckpointRecipe(0, [sorted(checkpoint_specs(arch, fmt))], fmt))


def _problems(case, state, loaded):
    """What the oracle says is wrong with one rank's state and loaded set."""
    from weightcheck.conformance.assertions import state_mismatches
    from weightcheck.fixtures.materialize import case_tensors
    from weightcheck.reference_models.oracle import expected_state
    from weightcheck.reference_models.oracle.expected import checkpoint_shapes

    fmt = case.recipe.format
    exp = expected_state(case.arch, case.placement, case_tensors(case), fmt, False)
    problems = state_mismatches(state, exp, checkpoint_shapes(case.arch, fmt))
    if loaded != set(exp.tracked):
        problems.append(f"tracked {sorted(loaded ^ set(exp.tracked))}")
    return problems


@pytest.mark.parametrize(
    "family, placement",
    [
        ("llama", _placement(tp=2, tp_rank=1)),
        ("llama", _placement(tp=2, tp_rank=0, pp=2, pp_rank=1)),
        ("qwen3_moe", _placement(tp=2, tp_rank=1)),  # experts split over tp
        ("qwen3_moe", _placement(ep=2, ep_rank=1)),  # experts split over ep (DP 2)
        ("qwen3_moe", _placement(tp=2, tp_rank=1, ep=4, ep_rank=3)),
    ],
)
def test_one_rank_of_a_world_holds_its_slice(family, placement):
    """build -> load -> load (reload) -> state on a handle whose model lives in a pool rank."""
    from weightcheck.arch import Arch
    from weightcheck.fixtures.materialize import scratch_dir, write_case

    arch = _tiny_moe() if family == "qwen3_moe" else Arch("llama", 16, 4, 4, 2, 4, 8, 40)
    case = _case(arch, placement)
    loader = vllm_loader.loader
    with scratch_dir() as path:
        checkpoint = write_case(case, path)
        model = loader.build(arch, placement)
        assert isinstance(model, vllm_loader.PoolModel)
        assert model.world.size == vllm_loader.layout(placement).world_size
        loader.load(model, checkpoint)
        loaded = loader.load(model, checkpoint)
        state = loader.state(model)
    assert _problems(case, state, loaded) == []
    loader.check_loaded(model, loaded)


def test_load_ranks_loads_a_whole_world_in_one_run():
    """tp 2 x ep 4 (DP 2): the four ranks vLLM can hold of the 8-rank (tp, ep) grid."""
    from weightcheck.conformance.properties.all_ranks import ranks
    from weightcheck.fixtures.materialize import scratch_dir, write_case

    arch = _tiny_moe()
    placements = ranks(_placement(tp=2, ep=4), vllm_loader.loader.capabilities)
    assert [(p.tp_rank, p.ep_rank) for p in placements] == [(0, 0), (0, 2), (1, 1), (1, 3)]
    case = _case(arch, placements[0])
    with scratch_dir() as path:
        checkpoint = write_case(case, path)
        runs = vllm_loader.loader._pool.world(4).stats.runs if vllm_loader.loader._pool else 0
        results = vllm_loader.loader.load_ranks(arch, placements, checkpoint)
    assert vllm_loader.loader.pool.world(4).stats.runs == runs + 1
    for placement, (state, loaded) in zip(placements, results):
        assert _problems(_case(arch, placement), state, loaded) == [], placement


def test_load_ranks_returns_each_ranks_exception():
    """Every rank's result comes back in order, a rank's exception in its place: vLLM's
    Qwen3-MoE refuses a pipeline stage whose layers are all dense (finding 7), the other
    stage builds and loads."""
    from dataclasses import replace

    from weightcheck.arch import MoE
    from weightcheck.conformance.properties.all_ranks import ranks
    from weightcheck.fixtures.materialize import scratch_dir, write_case

    arch = replace(_tiny_moe(), num_layers=2, moe=MoE(4, 2, 8, dense_layers=(0,)))
    placements = ranks(_placement(pp=2, layers=2), vllm_loader.loader.capabilities)
    with scratch_dir() as path:
        checkpoint = write_case(_case(arch, placements[0]), path)
        results = vllm_loader.loader.load_ranks(arch, placements, checkpoint)
    assert type(results[0]) is RuntimeError
    assert "No Qwen3MoE layer found" in str(results[0])
    state, loaded = results[1]
    assert "model.layers.1.mlp.experts.w13_weight" in state and loaded


def test_tp_above_the_expert_count_is_declared_unsupported():
    """vLLM's Qwen MoE refuses tp > num_experts (without ep): declared, never built."""
    from dataclasses import replace

    from weightcheck.arch import MoE

    arch = replace(_tiny_moe(), moe=MoE(1, 1, 8))
    assert "larger than the number of experts" in vllm_loader.placement_reason(_placement(tp=2), arch)
    assert vllm_loader.placement_reason(_placement(tp=2), _tiny_moe()) is None


def test_single_rank_in_this_process():
    """WEIGHTCHECK_VLLM_SINGLE=inprocess: one-rank models are built in this process."""
    from weightcheck.fixtures.materialize import scratch_dir, write_case

    loader = vllm_loader.VllmLoader(single="inprocess")
    arch = _tiny_moe()
    case = _case(arch, _placement())
    with scratch_dir() as path:
        checkpoint = write_case(case, path)
        model = loader.build(arch, case.placement)
        assert isinstance(model, vllm_loader.VllmModel)
        loaded = loader.load(model, checkpoint)
        state = loader.state(model)
    assert _problems(case, state, loaded) == []
    assert loader._pool is None


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


def test_a_stream_consumed_in_a_rank_process_is_counted_here():
    """The checkpoint object travels to the rank process as a copy; what its stream counted
    there (the suite's HostileCheckpoint: ``consumed``) is added back to the caller's object,
    and a stream that poisons every tensor once the next is asked for still loads exactly."""
    from weightcheck.fixtures.materialize import scratch_dir, write_case
    from weightcheck.fixtures.streams import HostileCheckpoint

    arch = _tiny_moe()
    placement = _placement(tp=2, tp_rank=1)
    case = _case(arch, placement)
    with scratch_dir() as path:
        stream = HostileCheckpoint(write_case(case, path))
        model = vllm_loader.loader.build(arch, placement)
        loaded = vllm_loader.loader.load(model, stream)
        assert stream.consumed == len(case.recipe.names)
        state = vllm_loader.loader.state(model)
        ranks = [_placement(tp=2, tp_rank=r) for r in range(2)]
        again = HostileCheckpoint(write_case(case, path))
        results = vllm_loader.loader.load_ranks(arch, ranks, again)
        assert again.consumed == 2 * len(case.recipe.names)
    assert _problems(case, state, loaded) == []
    assert _problems(case, *results[1]) == []


def test_a_checkpoint_directory_is_read_by_vllms_own_reader():
    """A plain Checkpoint is read with DefaultModelLoader's reader: a shard the index names but
    that is missing is vLLM's FileNotFoundError (the suite's own reader is never used)."""
    from weightcheck.arch import Arch, Placement
    from weightcheck.fixtures.case import Case, CheckpointRecipe
    from weightcheck.fixtures.materialize import scratch_dir, write_case
    from weightcheck.reference_models.families import checkpoint_specs

    arch = Arch("llama", 16, 1, 2, 2, 8, 16, 40)
    names = sorted(checkpoint_specs(arch, "default"))
    case = Case(arch, Placement((1,)), CheckpointRecipe(0, [names[:6], names[6:]], "default"))
    loader = vllm_loader.VllmLoader(single="inprocess")
    with scratch_dir() as path:
        checkpoint = write_case(case, path)
        sorted(path.glob("*.safetensors"))[1].unlink()
        with pytest.raises(FileNotFoundError, match="referenced in index but missing"):
            loader.load(loader.build(arch, case.placement), checkpoint)


def test_a_weight_stream_is_loaded_group_by_group():
    """Any other checkpoint object is a caller's stream (vLLM's weight sync): one load_weights
    call per group of weight_groups(), the loaded sets united."""
    from weightcheck.arch import Arch, Placement
    from weightcheck.fixtures.case import Case, CheckpointRecipe
    from weightcheck.fixtures.materialize import scratch_dir, write_case
    from weightcheck.reference_models.families import checkpoint_specs

    arch = Arch("llama", 16, 1, 2, 2, 8, 16, 40)
    case = Case(arch, Placement((1,)), CheckpointRecipe(0, [sorted(checkpoint_specs(arch, "default"))], "default"))
    loader = vllm_loader.VllmLoader(single="inprocess")
    with scratch_dir() as path:
        pairs = list(write_case(case, path).weights())

    class Stream:
        calls = 0

        def weight_groups(self):
            for i in range(0, len(pairs), 3):
                Stream.calls += 1
                yield iter(pairs[i : i + 3])

    model = loader.build(arch, case.placement)
    loaded = loader.load(model, Stream())
    assert Stream.calls == -(-len(pairs) // 3)
    assert _problems(case, loader.state(model), loaded) == []


def test_lora_wraps_with_vllms_own_manager():
    """vLLM's LoRA manager wraps the targets (qkv_proj.base_layer.weight, also Qwen2-MoE's
    shared_expert.gate_up_proj); the base weights load exactly and are tracked under the
    base_layer names (vLLM reports them unwrapped; the adapter names the parameter)."""
    from weightcheck.arch import Arch, LoRA, MoE, Placement
    from weightcheck.fixtures.case import Case, CheckpointRecipe
    from weightcheck.fixtures.materialize import scratch_dir, write_case
    from weightcheck.reference_models.families import checkpoint_specs

    loader = vllm_loader.VllmLoader(single="inprocess")
    arch = Arch("qwen2_moe", 16, 2, 4, 2, 4, 8, 40, moe=MoE(4, 2, 8, 8, dense_layers=(0,)), lora=LoRA(("gate_up", "qkv"), 3))
    case = Case(arch, Placement((2,)), CheckpointRecipe(0, [sorted(checkpoint_specs(arch, "fused_experts"))], "fused_experts"))
    with scratch_dir() as path:
        checkpoint = write_case(case, path)
        model = loader.build(arch, case.placement)
        loaded = loader.load(model, checkpoint)
        state = loader.state(model)
    assert "model.layers.1.mlp.shared_expert.gate_up_proj.base_layer.weight" in state
    assert "model.layers.0.self_attn.qkv_proj.base_layer.weight" in loaded
    assert not any("lora" in n for n in state)
    assert _problems(case, state, loaded) == []


def test_experts_lora_is_declared_unsupported():
    from weightcheck.arch import LoRA

    arch = _tiny_moe(lora=LoRA(("experts",), 1))
    assert "cannot wrap MoE experts for LoRA" in vllm_loader.placement_reason(_placement(), arch)
    assert vllm_loader.placement_reason(_placement(), _tiny_moe(lora=LoRA(("qkv",), 1))) is None


def test_in_place_reload_after_processing_keeps_every_parameters_storage():
    """vLLM's in-place reload (initialize/finalize_layerwise_reload) after
    process_weights_after_loading: the second checkpoint's values, in the same storage.  (The
    promise is not declared: through the pool, state() sends copies.)"""
    from weightcheck.arch import Arch, Placement
    from weightcheck.fixtures.case import Case, CheckpointRecipe
    from weightcheck.fixtures.materialize import scratch_dir, write_case
    from weightcheck.reference_models.families import checkpoint_specs

    arch = Arch("llama", 16, 2, 4, 2, 4, 8, 40)
    names = [sorted(checkpoint_specs(arch, "default"))]
    first, second = (Case(arch, Placement((2,)), CheckpointRecipe(s, names, "default")) for s in (0, 1))
    loader = vllm_loader.VllmLoader(single="inprocess")
    with scratch_dir() as p1, scratch_dir() as p2:
        c1, c2 = write_case(first, p1), write_case(second, p2)
        model = loader.build(arch, first.placement)
        loader.load(model, c1)
        loader.process_weights_after_loading(model)
        before = {n: t.data_ptr() for n, t in loader.state(model).items()}
        loaded = loader.load(model, c2)
        loader.process_weights_after_loading(model)
        state = loader.state(model)
    assert {n: t.data_ptr() for n, t in state.items()} == before
    assert _problems(second, state, loaded) == []


def test_moe_processing_needs_a_kernel_the_wheel_lacks():
    import torch

    if hasattr(torch.ops._C, "prepack_moe_weight"):
        pytest.skip("this vLLM build has its CPU MoE kernels")
    loader = vllm_loader.VllmLoader(single="inprocess")
    model = loader.build(_tiny_moe(), _placement())
    with pytest.raises(NotImplementedError, match="prepack_moe_weight"):
        loader.process_weights_after_loading(model)


def test_deepseek_v32_builds_with_the_sparse_attention_stubbed_at_construction_only():
    """vLLM's CPU platform refuses sparse MLA attention; the adapter answers CPU_MLA during
    construction only, and vLLM's own load_weights fuses the indexer's wk and weights_proj."""
    from vllm.platforms import current_platform

    from weightcheck.arch import MLA, Arch, Placement
    from weightcheck.fixtures.case import Case, CheckpointRecipe
    from weightcheck.fixtures.materialize import scratch_dir, write_case
    from weightcheck.reference_models.families import checkpoint_specs

    original = type(current_platform).__dict__["get_attn_backend_cls"]
    arch = Arch("deepseek_v32", 16, 2, 2, 2, 8, 12, 40, mla=MLA(6, 4, 2, 2, 3, 2, 4))
    case = Case(arch, Placement((2,)), CheckpointRecipe(0, [sorted(checkpoint_specs(arch, "default"))], "default"))
    loader = vllm_loader.VllmLoader(single="inprocess")
    with scratch_dir() as path:
        checkpoint = write_case(case, path)
        model = loader.build(arch, case.placement)
        assert type(current_platform).__dict__["get_attn_backend_cls"] is original
        loaded = loader.load(model, checkpoint)
        state = loader.state(model)
    assert "model.layers.0.self_attn.indexer.wk_weights_proj.weight" in state
    assert _problems(case, state, loaded) == []  # float32: the k_norm dtype question does not arise


def test_a_built_model_reads_nan_until_loaded():
    """vLLM allocates with torch.empty; the adapter fills what ``state`` reports, so a region
    vLLM never loads reads NaN on every run, never an allocator's leftovers."""
    loader = vllm_loader.VllmLoader(single="inprocess")
    arch = _tiny_moe(tie_word_embeddings=True)
    state = loader.state(loader.build(arch, _placement()))
    assert state and all(torch.isnan(p.float()).all() for p in state.values())
