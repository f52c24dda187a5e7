"""The SGLang adapter's capabilities and placements, shipped expectations and regression cases,
findings reproduced directly and tiny builds + loads at one rank on SGLang's CPU engine (skipped without
sglang importable: ``bash ci/adapters/install_sglang.sh``, then put its directory on PYTHONPATH
with SGLANG_USE_CPU_ENGINE=1, as .ci/run does)."""

import itertools
from pathlib import Path

import pytest
import torch

pytest.importorskip("sglang")

from weightcheck.adapters import sglang_loader  # noqa: E402
from weightcheck.capabilities import FEATURES, PROMISES  # noqa: E402
from weightcheck.conformance.expectations import parse  # noqa: E402


def test_capabilities_are_four_families_and_tensor_pipeline_and_expert_parallel():
    caps = sglang_loader.loader.capabilities
    assert caps.families == {"llama", "gpt2", "qwen3_moe", "qwen2_moe"}
    assert caps.features <= set(FEATURES) | set(PROMISES)
    assert {
        "tensor_parallel", "pipeline_parallel", "expert_parallel", "tied_embeddings", "attention_bias",
        "sharded_checkpoint",
    } <= caps.features
    assert "lora" not in caps.features
    assert caps.placements is sglang_loader.placement_reason
    assert sglang_loader.loader.name.startswith("sglang ")


def _placement(tp=1, tp_rank=0, pp=1, ep=1, layers=2, pp_rank=0):
    from weightcheck.arch import Placement

    parts = [layers // pp] * pp
    parts[-1] += layers - sum(parts)
    return Placement(tuple(parts), tp, tp_rank, pp, pp_rank, ep, 0)


def test_placements_sglang_holds_and_those_it_cannot():
    from weightcheck.arch import Arch, MoE

    moe = Arch("qwen3_moe", 16, 2, 2, 2, 8, 8, 40, moe=MoE(2, 1, 8))
    gpt2 = Arch("gpt2", 16, 2, 2, 2, 8, 8, 40)
    for tp in (1, 2, 4):
        assert sglang_loader.placement_reason(_placement(tp=tp, tp_rank=tp - 1)) is None
    for tp in (1, 2):  # pp 2 at tp 1 and 2: worlds of 2 and 4
        assert sglang_loader.placement_reason(_placement(tp=tp, tp_rank=tp - 1, pp=2, pp_rank=1)) is None
        assert sglang_loader.placement_reason(_placement(tp=tp, pp=2), moe) is None
    assert "multiple of 64" in sglang_loader.placement_reason(_placement(tp=3))
    assert "number of experts" in sglang_loader.placement_reason(_placement(tp=4), moe)
    assert sglang_loader.placement_reason(_placement(tp=2), moe) is None
    assert "no pipeline parallel" in sglang_loader.placement_reason(_placement(pp=2), gpt2)
    for pp in (3, 4):  # worlds of 3 and 4
        assert sglang_loader.placement_reason(_placement(pp=pp, pp_rank=pp - 1, layers=4), moe) is None
    for placement in (_placement(tp=4, pp=2), _placement(tp=2, pp=3, layers=3)):
        assert "not attempted" in sglang_loader.placement_reason(placement)
    with pytest.raises(NotImplementedError, match="only ep = tp"):
        sglang_loader.loader.build(moe, _placement(ep=2))


def test_world_ranks_and_default_partition_are_sglangs():
    from sglang.srt.distributed.utils import get_pp_indices

    # SGLang's world: TP groups contiguous, PP groups strided by tp
    assert [sglang_loader.world_rank(_placement(tp=2, tp_rank=t, pp=2, pp_rank=p))
            for p in (0, 1) for t in (0, 1)] == [0, 1, 2, 3]
    for layers in range(2, 9):
        for pp in (2, 3):
            if layers < pp:
                continue
            parts = sglang_loader.sglang_default_partition(layers, pp)
            bounds = [sum(parts[:r]) for r in range(pp + 1)]
            assert [get_pp_indices(layers, r, pp) for r in range(pp)] == list(itertools.pairwise(bounds))
    # not vLLM's: SGLang gives the extra layer to the last rank
    assert sglang_loader.sglang_default_partition(3, 2) == (1, 2)


def test_fp8_is_opt_in():
    assert "fp8_per_tensor" not in sglang_loader.features({})
    assert "fp8_per_tensor" in sglang_loader.features({"WEIGHTCHECK_SGLANG_FP8": "1"})


def test_the_adapter_ships_its_expectations_and_regression_cases():
    from weightcheck.conformance.protocol import resolve_loader

    loader = sglang_loader.loader
    assert loader.expectations.name == "sglang.txt" and loader.expectations.is_file()
    assert loader.regressions.name == "sglang"
    cases = sorted(p.stem for p in loader.regressions.glob("*.json"))
    assert cases and all(c.startswith("sglang-") for c in cases)
    defaults = resolve_loader("weightcheck.adapters.sglang_loader").defaults()
    assert defaults.expectations == loader.expectations
    assert defaults.regressions == loader.regressions
    # Every regression entry of the expectations names a shipped or a bundled case file.
    from weightcheck import fixtures

    bundled = {p.stem for p in (Path(fixtures.__file__).parent / "regressions").glob("*.json")}
    ids = [e.id for e in parse(loader.expectations)]
    named = {i.split("]", 1)[0][len("regression["):] for i in ids if i.startswith("regression[")}
    assert named & set(cases) == set(cases)  # every shipped case has its entries
    assert named <= set(cases) | bundled, sorted(named - set(cases) - bundled)


def _case(arch, fmt="default", drop=()):
    from weightcheck.arch import Placement
    from weightcheck.fixtures.case import Case, CheckpointRecipe
    from weightcheck.reference_models.families import checkpoint_specs

    names = sorted(n for n in checkpoint_specs(arch, fmt) if n not in drop)
    return Case(arch, Placement((arch.num_layers,)), CheckpointRecipe(0, [names], fmt))


def _problems(case, state):
    """What the oracle says is wrong with the rank's state."""
    from weightcheck.conformance.assertions import state_mismatches
    from weightcheck.fixtures.materialize import case_tensors
    from weightcheck.reference_models.oracle import expected_state
    from weightcheck.reference_models.oracle.expected import checkpoint_shapes

    fmt = case.recipe.format
    exp = expected_state(case.arch, case.placement, case_tensors(case), fmt, False)
    return state_mismatches(state, exp, checkpoint_shapes(case.arch, fmt))


def _build_and_load(case):
    from weightcheck.fixtures.materialize import scratch_dir, write_case

    loader = sglang_loader.loader
    with scratch_dir() as path:
        checkpoint = write_case(case, path)
        model = loader.build(case.arch, case.placement)
        assert isinstance(model, sglang_loader.SglangModel)
        assert loader.load(model, checkpoint) is None  # SGLang tracks nothing
        state = loader.state(model)
    return model, state


def test_llama_round_trips_at_one_rank():
    """GQA, untied, float32: every runtime parameter holds exactly its checkpoint data."""
    from weightcheck.arch import Arch

    case = _case(Arch("llama", 16, 1, 4, 2, 4, 8, 40))
    model, state = _build_and_load(case)
    assert type(model.module).__name__ == "LlamaForCausalLM"
    assert "model.layers.0.self_attn.qkv_proj.weight" in state
    assert tuple(state["model.embed_tokens.weight"].shape) == (64, 16)  # vocab padded to 64
    assert _problems(case, state) == []


def test_qwen3_moe_round_trips_at_one_rank():
    """Untied, every layer sparse (the cases SGLang gets right): experts stacked as w13/w2."""
    from weightcheck.arch import Arch, MoE

    case = _case(Arch("qwen3_moe", 16, 1, 2, 2, 8, 8, 40, moe=MoE(2, 1, 8)), fmt="per_expert")
    _, state = _build_and_load(case)
    assert tuple(state["model.layers.0.mlp.experts.w13_weight"].shape) == (2, 16, 16)
    assert _problems(case, state) == []


def test_finding_1_a_missing_tensor_loads_silently():
    """docs/adapters/sglang.md finding 1: without o_proj.weight the load neither raises nor
    reports, and the parameter is simply not the checkpoint's (uninitialised memory)."""
    from weightcheck.arch import Arch

    arch = Arch("llama", 16, 1, 2, 2, 8, 16, 40)
    drop = "model.layers.0.self_attn.o_proj.weight"
    _, state = _build_and_load(_case(arch, drop=(drop,)))  # no exception
    assert drop in state
    problems = _problems(_case(arch), state)  # against the complete checkpoint's values
    assert problems and all(drop in p for p in problems), problems


def test_finding_2_gpt2_ignores_untied_embeddings():
    """Finding 2: an untied GPT-2's lm_head is transformer.wte; its lm_head.weight is dropped."""
    from weightcheck.arch import Arch

    case = _case(Arch("gpt2", 8, 1, 2, 2, 4, 16, 40, tie_word_embeddings=False))
    model, state = _build_and_load(case)
    assert model.module.lm_head is model.module.transformer.wte
    assert "lm_head.weight" not in state


def test_pipeline_parallel_groups_are_made_per_combination_in_one_world():
    """A world of 2 rank processes holds tp 2 and pp 2 (groups made once per combination, then
    swapped in); pp ranks build SGLang's default split or the partition the placement names
    (SGLANG_PP_LAYER_PARTITION).  Findings 13 and 14: an untied lm_head on every pp rank, a tied
    one (the embedding) on the first only."""
    from weightcheck.arch import Arch, Placement
    from weightcheck.fixtures.case import Case, CheckpointRecipe
    from weightcheck.fixtures.materialize import scratch_dir, write_case
    from weightcheck.reference_models.families import checkpoint_specs

    loader = sglang_loader.loader
    for tie in (False, True):
        arch = Arch("llama", 16, 3, 2, 2, 8, 16, 40, tie_word_embeddings=tie)
        names = sorted(checkpoint_specs(arch, "default"))
        with scratch_dir() as path:
            for tp, pp, partition in ((1, 2, (1, 2)), (2, 1, (3,)), (1, 2, (2, 1)), (2, 1, (3,))):
                placements = [Placement(partition, tp, t, pp, p) for p in range(pp) for t in range(tp)]
                checkpoint = write_case(Case(arch, placements[0], CheckpointRecipe(0, [names], "default")), path)
                results = loader.load_ranks(arch, placements, checkpoint)
                for placement, result in zip(placements, results):
                    assert not isinstance(result, Exception), result
                    state, tracked = result
                    assert tracked is None
                    layers = {int(n.split(".")[2]) for n in state if n.startswith("model.layers.")}
                    assert layers == set(placement.layers), (placement, layers)
                    if pp == 1:
                        continue
                    assert ("model.embed_tokens.weight" in state) == (placement.pp_rank == 0)
                    assert ("lm_head.weight" in state) == (not tie)  # finding 13 (every rank)
                    assert ("model.norm.weight" in state) == (placement.pp_rank == 1)
            # a handle at the last pp rank, built in the same world after tp 2
            model = loader.build(arch, Placement((2, 1), 1, 0, 2, 1))
            assert isinstance(model, sglang_loader.PoolModel) and model.rank == 1
            assert loader.load(model, checkpoint) is None
            assert "model.embed_tokens.weight" not in loader.state(model)  # finding 14 when tied


def test_a_built_model_reads_nan_until_loaded():
    """SGLang allocates with torch.empty; the adapter fills what ``state`` reports, so a region
    SGLang never loads reads NaN on every run, never an allocator's leftovers."""
    from weightcheck.arch import Arch, Placement

    arch = Arch("llama", 16, 1, 4, 2, 4, 8, 40)
    loader = sglang_loader.loader
    state = loader.state(loader.build(arch, Placement((1,))))
    assert state and all(torch.isnan(p.float()).all() for p in state.values())


def _world(case, placements):
    """Every given rank of one world built and loaded in one world run: (placement, state)."""
    from weightcheck.fixtures.materialize import scratch_dir, write_case

    with scratch_dir() as path:
        checkpoint = write_case(case, path)
        results = sglang_loader.loader.load_ranks(case.arch, placements, checkpoint)
    for placement, result in zip(placements, results):
        assert not isinstance(result, Exception), result
        yield placement, result[0]


@pytest.mark.parametrize("family, tp", [("qwen3_moe", 2), ("qwen2_moe", 2), ("qwen3_moe", 4)])
def test_expert_parallel_ranks_hold_their_experts_whole(family, tp):
    """ep = tp (SGLang's expert group is then the tp group): each rank holds its linear share
    of the experts, unsharded, and everything else as at tp alone; the oracle agrees on every
    rank, in one world run."""
    from dataclasses import replace

    from weightcheck.arch import Arch, MoE, Placement

    shared = 8 if family == "qwen2_moe" else 0  # Qwen2-MoE: head_dim is hidden / heads
    arch = Arch(family, 16, 1, 4, 4, 4, 8, 40, moe=MoE(8, 2, 8, shared_expert_intermediate_size=shared))
    case = _case(arch, fmt="per_expert")
    placements = [Placement((1,), tp, r, ep_size=tp, ep_rank=r) for r in range(tp)]
    assert all(sglang_loader.placement_reason(p, arch) is None for p in placements)
    for placement, state in _world(case, placements):
        assert tuple(state["model.layers.0.mlp.experts.w13_weight"].shape) == (8 // tp, 16, 16)
        assert _problems(replace(case, placement=placement), state) == []


def test_expert_parallel_sglang_cannot_hold_is_declared():
    """SGLang's expert group lies inside the tp group and splits the experts evenly: ep = tp,
    the ep rank at the tp rank, linear, experts a multiple of ep."""
    from weightcheck.arch import Arch, MoE, Placement

    arch = Arch("qwen3_moe", 16, 1, 4, 4, 4, 8, 40, moe=MoE(6, 2, 8))
    reason = sglang_loader.placement_reason
    assert "only ep = tp" in reason(Placement((1,), 2, 0, ep_size=4, ep_rank=0), arch)
    assert "cannot sit at tp rank" in reason(Placement((1,), 2, 0, ep_size=2, ep_rank=1), arch)
    assert "linearly" in reason(Placement((1,), 2, 0, ep_size=2, ep_rank=0, expert_placement="round_robin"), arch)
    assert "evenly" in reason(Placement((1,), 4, 0, ep_size=4, ep_rank=0), arch)
    assert reason(Placement((1,), 2, 1, ep_size=2, ep_rank=1), arch) is None


@pytest.mark.parametrize("family, partition", [("llama", (1, 2, 1)), ("qwen3_moe", (1, 1, 1, 1))])
def test_pp_3_and_4_each_rank_builds_and_loads_its_layers(family, partition):
    """Worlds of 3 and 4 pp ranks (any partition through SGLANG_PP_LAYER_PARTITION): every rank
    holds exactly its layers, loaded bit-exact; the one difference from the layout is finding
    13 (an untied lm_head on every pp rank)."""
    from dataclasses import replace

    from weightcheck.arch import Arch, MoE, Placement

    moe = MoE(4, 1, 8) if family == "qwen3_moe" else None
    arch = Arch(family, 16, sum(partition), 2, 2, 8, 8, 40, moe=moe)
    case = _case(arch, fmt="per_expert" if moe else "default")
    pp = len(partition)
    placements = [Placement(partition, 1, 0, pp, p) for p in range(pp)]
    for placement, state in _world(case, placements):
        layers = {int(n.split(".")[2]) for n in state if n.startswith("model.layers.")}
        assert layers == set(placement.layers)
        problems = _problems(replace(case, placement=placement), state)
        assert all(p.startswith("lm_head.weight should not exist") for p in problems), problems
        assert bool(problems) == (not placement.is_last_pp_rank)  # finding 13
