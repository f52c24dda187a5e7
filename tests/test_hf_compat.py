"""Generated checkpoints are real HF checkpoints: transformers 5.x loads them with no missing key.

Runs only where transformers is installed (the real-loader adapters bring it in); checked by
hand with transformers 5.23.0.
"""

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from weightcheck.fixtures.materialize import scratch_dir, write_case
from weightcheck.strategies import cases
from weightcheck.conformance.profiles import CASE_HEALTH_CHECKS

FAMILY_CLASSES = {
    "llama": "LlamaForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
}

transformers = pytest.importorskip("transformers")


@settings(
    max_examples=40, deadline=None, database=None, phases=[Phase.generate],
    suppress_health_check=CASE_HEALTH_CHECKS,
)
@given(case=st.sampled_from(FAMILY_CLASSES).flatmap(cases))
def test_transformers_loads_the_checkpoint(case):
    with scratch_dir() as path:
        write_case(case, path)
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            str(path), output_loading_info=True
        )
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert type(model).__name__ == FAMILY_CLASSES[case.arch.family]
