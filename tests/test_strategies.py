"""The strategies reach every feature the issue promises, and only valid cases."""

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from weightcheck.capabilities import Capabilities
from weightcheck.reference_models.oracle.expected import needed_sources
from weightcheck.strategies import cases

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


def _q(c):
    return c.arch.quant


def _tp_split_cuts_a_block(c):
    """Some shard of this rank starts inside a block: the q rows of tp rank r > 0."""
    q, p = _q(c), c.placement
    if q is None or q.block is None or p.tp_size == 1 or p.tp_rank == 0:
        return False
    return (c.arch.q_size // p.tp_size * p.tp_rank) % q.block[0] != 0


FP8_REACHABLE = {
    "per-tensor static": lambda c: _q(c) is not None and _q(c).activation_scheme == "static",
    "block dividing neither dim": lambda c: _q(c) is not None and _q(c).block is not None
    and c.arch.hidden_size % _q(c).block[1] and c.arch.q_size % _q(c).block[0],
    "TP split through a block": _tp_split_cuts_a_block,
    "ignored layers": lambda c: _q(c) is not None and bool(_q(c).ignored),
    "modules_to_not_convert": lambda c: _q(c) is not None and _q(c).ignore_key == "modules_to_not_convert",
    "FP8 + PP + sharded": lambda c: _q(c) is not None and c.placement.pp_size > 1 and len(c.recipe.files) > 1,
}


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


@pytest.mark.parametrize("family", ["llama", "qwen3_moe", "deepseek_v32"])
@pytest.mark.parametrize("what", list(FP8_REACHABLE))
def test_fp8_feature_is_reachable(family, what):
    if family == "deepseek_v32" and what == "per-tensor static":
        pytest.skip("deepseek_v32 checkpoints are block FP8 (GLM-5-FP8)")
    find(cases(family), FP8_REACHABLE[what], settings=GENERATE_ONLY)


def test_deepseek_fp8_wk_and_its_scale_in_different_files_is_reachable():
    wk, scale = "model.layers.0.self_attn.indexer.wk.weight", "model.layers.0.self_attn.indexer.wk.weight_scale_inv"

    def apart(c):
        where = {n: i for i, f in enumerate(c.recipe.files) for n in f}
        return scale in where and where[scale] < where[wk]

    find(cases("deepseek_v32"), apart, settings=GENERATE_ONLY)


@settings(max_examples=50, deadline=None)
@given(case=cases("llama", max_ranks=8) | cases("qwen2_moe", max_ranks=8))
def test_max_ranks_bounds_the_grid(case):
    p = case.placement
    assert p.tp_size * p.pp_size * p.ep_size <= 8


@settings(max_examples=100, deadline=None)
@given(case=st.sampled_from(["llama", "gpt2", "qwen3_moe", "qwen2_moe", "deepseek_v32"]).flatmap(cases))
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
