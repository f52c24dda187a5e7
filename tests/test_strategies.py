"""The strategies reach every feature the issue promises, and only valid cases."""

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from conformance.protocol import Capabilities
from reference_models.oracle.expected import needed_sources
from strategies import cases

REACHABLE = {
    "tp 4, rank 3": lambda c: c.placement.tp_size == 4 and c.placement.tp_rank == 3,
    "tp 3": lambda c: c.placement.tp_size == 3,
    "GQA replication": lambda c: c.placement.tp_size > c.arch.num_kv_heads > 1,
    "vocab not a multiple of 64, above 64": lambda c: c.arch.vocab_size > 64 and c.arch.vocab_size % 64,
    "4 files": lambda c: len(c.recipe.files) == 4,
    "tied with redundant lm_head": lambda c: "lm_head.weight" in c.recipe.names and c.arch.tie_word_embeddings,
    "bf16": lambda c: c.arch.dtype == "bfloat16",
    "fp16": lambda c: c.arch.dtype == "float16",
    "buffers": lambda c: any("inv_freq" in n or "masked_bias" in n for n in c.recipe.names),
}


MOE_REACHABLE = {
    "EP not dividing the experts": lambda c: c.placement.ep_size > 1 and c.arch.moe.num_experts % c.placement.ep_size,
    "round robin EP": lambda c: c.placement.ep_size > 1 and c.placement.expert_placement == "round_robin",
    "16 experts": lambda c: c.arch.moe.num_experts == 16,
    "mixed dense and MoE layers": lambda c: bool(c.arch.moe.dense_layers),
    "fused 3-D experts": lambda c: c.recipe.format == "fused_experts",
    "LoRA on experts": lambda c: c.arch.lora is not None and "experts" in c.arch.lora.targets,
    "LoRA + MoE + PP + TP + tied": lambda c: (
        c.arch.lora is not None and c.placement.pp_size > 1 and c.placement.tp_size > 1 and c.arch.tie_word_embeddings
    ),
    "vLLM's default partition [1, 2, 1]": lambda c: c.placement.pp_size == 3
    and c.arch.num_layers == 4 and c.placement.layer_partition == (1, 2, 1),
}
GENERATE_ONLY = settings(max_examples=2000, database=None, phases=[Phase.generate])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("what", list(REACHABLE))
def test_feature_is_reachable(family, what):
    if what == "GQA replication" and family == "gpt2":
        pytest.skip("gpt2 has no GQA")
    find(cases(family), REACHABLE[what], settings=GENERATE_ONLY)


@pytest.mark.parametrize("family", ["qwen3_moe", "qwen2_moe"])
@pytest.mark.parametrize("what", list(MOE_REACHABLE))
def test_moe_feature_is_reachable(family, what):
    find(cases(family), MOE_REACHABLE[what], settings=GENERATE_ONLY)


@settings(max_examples=50, deadline=None)
@given(case=cases("llama", max_ranks=8) | cases("qwen2_moe", max_ranks=8))
def test_max_ranks_bounds_the_grid(case):
    p = case.placement
    assert p.tp_size * p.pp_size * p.ep_size <= 8


@settings(max_examples=100, deadline=None)
@given(case=st.sampled_from(["llama", "gpt2", "qwen3_moe", "qwen2_moe"]).flatmap(cases))
def test_every_case_is_valid_for_the_oracle(case):
    needed = needed_sources(case.arch, case.placement, case.recipe.format)
    assert needed <= set(case.recipe.names)


@settings(max_examples=50, deadline=None)
@given(case=cases("llama", Capabilities(features={"attention_bias"})) | cases("gpt2", Capabilities(features=())))
def test_capabilities_bound_the_cases(case):
    assert case.placement.tp_size == 1
    assert not case.arch.tie_word_embeddings
    assert len(case.recipe.files) == 1
    if case.arch.family == "gpt2":
        assert case.arch.attention_bias  # gpt2 always has biases
