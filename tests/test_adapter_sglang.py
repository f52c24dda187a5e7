"""The SGLang adapter's capabilities and placements, shipped expectations and regression cases,
findings reproduced directly and tiny builds + loads at one rank on SGLang's CPU engine (skipped without
sglang importable: ``bash ci/adapters/install_sglang.sh``, then put its directory on PYTHONPATH
with SGLANG_USE_CPU_ENGINE=1, as .ci/run does)."""

from pathlib import Path

import pytest

pytest.importorskip("sglang")

from weightcheck.adapters import sglang_loader  # noqa: E402
from weightcheck.capabilities import FEATURES, PROMISES  # noqa: E402
from weightcheck.conformance.expectations import parse  # noqa: E402


def test_capabilities_are_four_families_and_tensor_parallel():
    caps = sglang_loader.loader.capabilities
    assert caps.families == {"llama", "gpt2", "qwen3_moe", "qwen2_moe"}
    assert caps.features <= set(FEATURES) | set(PROMISES)
    assert {"tensor_parallel", "tied_embeddings", "attention_bias", "sharded_checkpoint"} <= caps.features
    assert not caps.features & {"pipeline_parallel", "expert_parallel", "lora"}
    assert caps.placements is sglang_loader.placement_reason
    assert sglang_loader.loader.name.startswith("sglang ")


def _placement(tp=1, tp_rank=0, pp=1, ep=1, layers=2):
    from weightcheck.arch import Placement

    parts = [layers // pp] * pp
    parts[-1] += layers - sum(parts)
    return Placement(tuple(parts), tp, tp_rank, pp, 0, ep, 0)


def test_placements_sglang_holds_and_those_it_cannot():
    from weightcheck.arch import Arch, MoE

    moe = Arch("qwen3_moe", 16, 2, 2, 2, 8, 8, 40, moe=MoE(2, 1, 8))
    for tp in (1, 2, 4):
        assert sglang_loader.placement_reason(_placement(tp=tp, tp_rank=tp - 1)) is None
    assert "multiple of 64" in sglang_loader.placement_reason(_placement(tp=3))
    assert "number of experts" in sglang_loader.placement_reason(_placement(tp=4), moe)
    assert sglang_loader.placement_reason(_placement(tp=2), moe) is None
    for placement in (_placement(pp=2), _placement(ep=2)):
        assert "tensor parallel only" in sglang_loader.placement_reason(placement)
        with pytest.raises(NotImplementedError, match="tensor parallel only"):
            sglang_loader.loader.build(moe, placement)


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
