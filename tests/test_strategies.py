"""The strategies reach every feature the issue promises, and only valid cases."""

import itertools
import math

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from weightcheck.capabilities import Capabilities
from weightcheck.reference_models.oracle.expected import needed_sources
from weightcheck.reference_models.reference_loader.moe import local_experts
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


def _holes(placement, arch=None):
    """A loader's placement predicate with holes per family: no pp for GPT-2 (as SGLang), and
    nothing but one rank for Qwen3-MoE (a loader that declares most of the grid away)."""
    if arch is None:
        return None
    if arch.family == "gpt2" and placement.pp_size > 1:
        return "no pipeline parallel for gpt2"
    if arch.family == "qwen3_moe" and placement.tp_size * placement.pp_size > 1:
        return "one rank only for qwen3_moe"
    return None


HOLES = Capabilities(features={"tensor_parallel", "pipeline_parallel"}, placements=_holes)


@settings(max_examples=100, deadline=None)
@given(case=cases("gpt2", HOLES) | cases("qwen3_moe", HOLES) | cases("llama", HOLES))
def test_sizes_a_loader_cannot_hold_fall_back_to_sizes_it_holds(case):
    """(tp, pp) -> (tp, 1) -> (1, 1) instead of a rejected example: filtering them made
    Hypothesis fail its filter health check on SGLang's GPT-2 all_ranks and reload tests once
    they ran all their examples."""
    assert _holes(case.placement, case.arch) is None


def test_the_fallback_keeps_tensor_parallel():
    find(cases("gpt2", HOLES), lambda c: c.placement.tp_size > 1, settings=GENERATE_ONLY)


# --- index boundaries and config.json as real checkpoints write it ---------------------------

FAMILIES = ["llama", "gpt2", "qwen3_moe", "qwen2_moe", "deepseek_v32"]
# Rare branches (about one example in 12-40, and Hypothesis runs clump them): searched for up to
# 10000 examples (a find stops at the first), derandomized.  The rarest, a two-digit expert on
# every rank of a linear split, is about one example in 250.
RARE = settings(max_examples=10000, database=None, phases=[Phase.generate], derandomize=True)
SHRINKING = settings(max_examples=4000, database=None, derandomize=True)


def _pp_rank_of(placement, layer):
    bounds = [sum(placement.layer_partition[: k + 1]) for k in range(placement.pp_size)]
    return next(k for k, end in enumerate(bounds) if layer < end)


def _every_ep_rank_has_a_two_digit_expert(c):
    p, moe = c.placement, c.arch.moe
    return p.ep_size > 1 and all(
        max(local_experts(moe.num_experts, p.ep_size, r, p.expert_placement)) >= 10
        for r in range(p.ep_size)
    )


def _unit(c):
    return math.lcm(64, c.placement.tp_size)


BOUNDARIES = {
    ">= 11 layers, layers 1 and 10 on different pipeline ranks": lambda c: (
        c.arch.num_layers >= 11 and _pp_rank_of(c.placement, 1) != _pp_rank_of(c.placement, 10)
    ),
    ">= 11 layers, a pipeline split at layer 10": lambda c: (
        c.arch.num_layers >= 11 and 10 in itertools.accumulate(c.placement.layer_partition)
    ),
    "this rank holds layer 10 but not layer 1": lambda c: (
        c.arch.num_layers >= 11 and 10 in c.placement.layers and 1 not in c.placement.layers
    ),
    "vocab one below a padding multiple": lambda c: (
        c.arch.vocab_size >= 63 and (c.arch.vocab_size + 1) % _unit(c) == 0
    ),
    "vocab one above a padding multiple": lambda c: (
        c.arch.vocab_size > 64 and (c.arch.vocab_size - 1) % _unit(c) == 0
    ),
    "vocab one above a padding multiple, tp 3 (unit 192)": lambda c: (
        c.placement.tp_size == 3 and c.arch.vocab_size == 193
    ),
}
EXPERT_BOUNDARIES = {
    ">= 11 experts, a two-digit expert id on every ep rank, round robin": lambda c: (
        c.placement.expert_placement == "round_robin" and _every_ep_rank_has_a_two_digit_expert(c)
    ),
    ">= 11 experts, a two-digit expert id on every ep rank, linear": lambda c: (
        c.placement.expert_placement == "linear" and _every_ep_rank_has_a_two_digit_expert(c)
    ),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("what", list(BOUNDARIES))
def test_index_boundary_is_reachable(family, what):
    find(cases(family), BOUNDARIES[what], settings=RARE)


@pytest.mark.parametrize("family", ["qwen3_moe", "qwen2_moe"])
@pytest.mark.parametrize("what", list(EXPERT_BOUNDARIES))
def test_expert_id_boundary_is_reachable(family, what):
    find(cases(family), EXPERT_BOUNDARIES[what], settings=RARE)


def _omittable_fields():
    """(family, field) for every field a family's config may leave out for some arch."""
    from weightcheck.reference_models.families import family_spec

    fields = {
        "llama": ("head_dim", "num_key_value_heads", "tie_word_embeddings", "attention_bias", "mlp_bias"),
        "gpt2": ("n_inner", "tie_word_embeddings"),
        "qwen3_moe": ("head_dim", "tie_word_embeddings", "attention_bias", "mlp_only_layers",
                      "decoder_sparse_step"),
        "qwen2_moe": ("tie_word_embeddings", "qkv_bias", "mlp_only_layers", "decoder_sparse_step"),
        "deepseek_v32": ("head_dim", "tie_word_embeddings", "attention_bias"),
    }
    for family, names in fields.items():  # the list above is every field the spec defaults
        spec = family_spec(family)
        assert set(names) == set(spec.hf_defaults(_any_config(family))), family
    return [(family, name) for family, names in fields.items() for name in names]


def _any_config(family):
    from weightcheck.reference_models.families import family_spec

    return family_spec(family).full_config(find(cases(family), lambda c: True, settings=GENERATE_ONLY).arch)


@pytest.mark.parametrize("family, field", _omittable_fields())
def test_each_omittable_config_field_is_left_out(family, field):
    """Drawn left out (GPT-2's n_inner: written null), where the arch's value is HF's default."""
    from weightcheck import hf_config

    def omitted(c):
        if field not in c.arch.config_omits:
            return False
        config = hf_config(c.arch)
        return config[field] is None if field == "n_inner" else field not in config

    find(cases(family), omitted, settings=RARE)


@pytest.mark.parametrize("family", FAMILIES)
def test_omittable_fields_are_also_written(family):
    """The same fields written with the default value: a loader is exercised both ways."""
    from weightcheck.reference_models.families import family_spec

    def written(c):
        spec = family_spec(c.arch.family)
        return bool(set(spec.omittable(c.arch)) - set(c.arch.config_omits))

    find(cases(family), written, settings=GENERATE_ONLY)


def test_gpt2_n_inner_is_drawn_null_and_explicitly_4h():
    from weightcheck import hf_config

    find(cases("gpt2"), lambda c: hf_config(c.arch)["n_inner"] is None, settings=RARE)
    find(cases("gpt2"), lambda c: hf_config(c.arch)["n_inner"] == 4 * c.arch.hidden_size, settings=RARE)


@pytest.mark.parametrize("family", FAMILIES)
def test_shrinking_goes_to_the_small_branches(family):
    """A big branch is reachable, never the minimum: the simplest case is small (1-4 layers, at
    most 16 experts) and writes every config field, the simplest with more than 4 layers has
    exactly 11, with more than 16 experts exactly 17 (in few layers)."""
    simplest = find(cases(family), lambda c: True, settings=SHRINKING)
    a = simplest.arch
    assert a.num_layers <= 4 and a.config_omits == ()
    assert a.vocab_size <= 200 and (a.family != "gpt2" or a.intermediate_size < 4 * a.hidden_size)
    if a.moe is not None:
        assert a.moe.num_experts <= 16  # the everyday branch
    many = find(cases(family), lambda c: c.arch.num_layers > 4, settings=SHRINKING)
    assert many.arch.num_layers == 11
    if family in ("qwen3_moe", "qwen2_moe"):
        experts = find(cases(family), lambda c: c.arch.moe.num_experts > 16, settings=SHRINKING)
        assert experts.arch.moe.num_experts == 17 and experts.arch.num_layers <= 4
