"""Generated checkpoints are real HF checkpoints: transformers 5.x loads them with no missing key.

Runs only where transformers is installed (the real-loader adapters bring it in):
``PYTHONPATH=~/.cache/weightcheck-extras/transformers python -m pytest tests/test_hf_compat.py``
(``bash ci/adapters/install_transformers.sh`` installs it there); checked with transformers 5.23.0.

The config transformers builds from the suite's config.json must mean the arch, whether the
optional fields are written or left out (``Arch.config_omits``): the values HF fills in for an
absent field are the arch's own.
"""

from dataclasses import replace

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from weightcheck.capabilities import FEATURES, Capabilities
from weightcheck.conformance.profiles import CASE_HEALTH_CHECKS
from weightcheck.fixtures.materialize import scratch_dir, write_case
from weightcheck.reference_models.families import family_spec
from weightcheck.strategies import cases

FAMILY_CLASSES = {
    "llama": "LlamaForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "deepseek_v32": "DeepseekV32ForCausalLM",
}
# FP8 checkpoints need transformers' FP8 quantizer (opt-in in the transformers adapter, with its
# own known failures); everything else about a case is the checkpoint transformers must load.
CAPS = Capabilities(features=set(FEATURES) - {"fp8_per_tensor", "fp8_block"})

transformers = pytest.importorskip("transformers")

SETTINGS = settings(
    max_examples=40, deadline=None, database=None, phases=[Phase.generate],
    suppress_health_check=CASE_HEALTH_CHECKS,
)
FAMILY_CASES = st.sampled_from(sorted(FAMILY_CLASSES)).flatmap(lambda f: cases(f, CAPS))


def resolved(config, arch) -> dict:
    """What transformers' config (and model code, for fields the class lacks) makes of the
    fields the suite may leave out, next to the arch's values."""
    H, nH = arch.hidden_size, arch.num_heads
    if arch.family == "gpt2":
        inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        return {"intermediate_size": (inner, arch.intermediate_size),
                "tie_word_embeddings": (config.tie_word_embeddings, arch.tie_word_embeddings)}
    out = {
        "tie_word_embeddings": (config.tie_word_embeddings, arch.tie_word_embeddings),
        "num_key_value_heads": (config.num_key_value_heads, arch.num_kv_heads),
        "head_dim": (getattr(config, "head_dim", H // nH), arch.head_dim),
    }
    if arch.family in ("llama", "qwen3_moe", "deepseek_v32"):
        out["attention_bias"] = (config.attention_bias, arch.attention_bias)
    if arch.family == "qwen2_moe":
        out["qkv_bias"] = (config.qkv_bias, True)
    if arch.moe is not None:
        step = config.decoder_sparse_step
        dense = [i for i in range(arch.num_layers)
                 if i in config.mlp_only_layers or (i + 1) % step != 0]
        out["dense_layers"] = (dense, list(arch.moe.dense_layers))
    return out


def load(case):
    with scratch_dir() as path:
        write_case(case, path)
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            str(path), output_loading_info=True
        )
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert type(model).__name__ == FAMILY_CLASSES[case.arch.family]
    wrong = {k: v for k, v in resolved(model.config, case.arch).items() if v[0] != v[1]}
    assert not wrong, f"config.json omits {case.arch.config_omits}; (transformers, arch): {wrong}"
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == case.arch.tie_word_embeddings


@SETTINGS
@given(case=FAMILY_CASES)
def test_transformers_loads_the_checkpoint(case):
    load(case)


@SETTINGS
@given(case=FAMILY_CASES)
def test_transformers_reads_a_config_with_every_omittable_field_left_out(case):
    arch = case.arch
    omits = family_spec(arch.family).omittable(arch)
    if not omits:
        return
    load(replace(case, arch=replace(arch, config_omits=omits)))
