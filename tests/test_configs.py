"""config.json as real checkpoints write it: optional fields left out only where HF assumes the
same value, the fields every real checkpoint of the family carries always written, and the
config alone determines the arch (``weightcheck.hf_config``, for adapters that build from it).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import weightcheck
from weightcheck.arch import Arch
from weightcheck.conformance.profiles import CASE_HEALTH_CHECKS
from weightcheck.fixtures.case import Case
from weightcheck.families import FAMILY_NAMES
from weightcheck.reference_models.families import family_spec, hf_config
from weightcheck.reference_models.mutants.config import ConfigReader
from weightcheck.strategies import cases

SETTINGS = settings(max_examples=200, deadline=None, database=None, suppress_health_check=CASE_HEALTH_CHECKS)
ALL_CASES = st.sampled_from(FAMILY_NAMES).flatmap(cases)

# What transformers 5.23 assumes for each optional field when config.json leaves it out, read
# from its config classes (and, where the class has no such field, the model code): written out
# here independently of the family specs, which must agree.
HF_DEFAULTS = {
    # LlamaConfig: head_dim None -> hidden // heads, num_key_value_heads None -> heads (__post_init__)
    "llama": lambda c: {
        "head_dim": c["hidden_size"] // c["num_attention_heads"],
        "num_key_value_heads": c["num_attention_heads"],
        "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
    },
    # GPT2Config: n_inner None (GPT2MLP: 4 * hidden_size), tie_word_embeddings True
    "gpt2": lambda c: {"n_inner": 4 * c["n_embd"], "tie_word_embeddings": True},
    # Qwen3MoeConfig has no head_dim: Qwen3MoeAttention getattr(config, "head_dim", hidden // heads)
    "qwen3_moe": lambda c: {
        "head_dim": c["hidden_size"] // c["num_attention_heads"],
        "tie_word_embeddings": False, "attention_bias": False,
        "mlp_only_layers": [], "decoder_sparse_step": 1,
    },
    "qwen2_moe": lambda c: {
        "tie_word_embeddings": False, "qkv_bias": True, "mlp_only_layers": [], "decoder_sparse_step": 1,
    },
    # DeepseekV32Config.__post_init__ sets head_dim = qk_rope_head_dim whatever is written
    "deepseek_v32": lambda c: {
        "head_dim": c["qk_rope_head_dim"], "tie_word_embeddings": False, "attention_bias": False,
    },
}


@SETTINGS
@given(case=ALL_CASES)
def test_the_config_determines_the_arch(case):
    """A reader that fills in absent fields as HF does builds exactly the arch (what adapters
    building from config.json see); the config is plain JSON."""
    config = weightcheck.hf_config(case.arch)
    assert json.loads(json.dumps(config)) == config
    assert ConfigReader()(config, case.arch) == case.arch


@SETTINGS
@given(case=ALL_CASES)
def test_only_fields_hf_fills_in_the_same_way_are_left_out(case):
    arch = case.arch
    spec = family_spec(arch.family)
    full, config = spec.full_config(arch), hf_config(arch)
    defaults = HF_DEFAULTS[arch.family](full)
    assert spec.hf_defaults(full) == defaults
    for name in arch.config_omits:
        assert full[name] == defaults[name] and type(full[name]) is type(defaults[name])
        if name == "n_inner":
            assert config[name] is None  # GPT-2's own config.json: "n_inner": null
        else:
            assert name not in config
    assert {k: v for k, v in config.items() if k not in arch.config_omits} == {
        k: v for k, v in full.items() if k not in arch.config_omits
    }


@SETTINGS
@given(case=cases("deepseek_v32"))
def test_deepseek_always_carries_yarn_rope_scaling_and_moe_layer_freq(case):
    """Every real DeepSeek-V3.2 config.json has both (SGLang's CPU engine needs both)."""
    arch = replace(case.arch, config_omits=family_spec("deepseek_v32").omittable(case.arch))
    config = hf_config(arch)
    rope = config["rope_scaling"]
    assert rope["type"] == "yarn" and config["moe_layer_freq"] == 1
    assert rope["factor"] * rope["original_max_position_embeddings"] == config["max_position_embeddings"]
    assert {"beta_fast", "beta_slow", "mscale", "mscale_all_dim"} <= set(rope)


def _llama(**kw) -> Arch:
    base = dict(family="llama", hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1,
                head_dim=4, intermediate_size=4, vocab_size=10)
    return Arch(**{**base, **kw})


def test_a_field_whose_value_differs_from_hfs_default_cannot_be_left_out():
    hf_config(_llama(config_omits=("head_dim",)))  # 8 // 2 == 4: fine
    with pytest.raises(ValueError, match="head_dim"):
        hf_config(_llama(head_dim=2, config_omits=("head_dim",)))
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        hf_config(_llama(tie_word_embeddings=True, config_omits=("tie_word_embeddings",)))


def test_case_files_without_config_omits_still_load():
    arch = _llama(config_omits=("mlp_bias", "attention_bias", "attention_bias"))
    assert arch.config_omits == ("attention_bias", "mlp_bias")
    data = json.loads(json.dumps(arch.to_dict()))
    assert Arch.from_dict(data) == arch
    del data["config_omits"]
    assert Arch.from_dict(data).config_omits == ()
    assert "mlp_bias" in hf_config(Arch.from_dict(data))


def test_the_regression_corpus_still_writes_every_field():
    """Case files written before ``config_omits`` existed load as "nothing omitted"."""
    files = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "regressions").rglob("*.json"))
    assert files
    for file in files:
        case = Case.from_dict(json.loads(file.read_text())["case"])
        assert case.arch.config_omits == ()
        assert hf_config(case.arch) == family_spec(case.arch.family).full_config(case.arch)


def test_hf_config_is_public_and_lazy():
    assert "hf_config" in weightcheck.__all__
    assert weightcheck.hf_config is hf_config
