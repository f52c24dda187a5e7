"""Every kind of adversarial input the properties promise is drawn, for the families it applies
to: a property that never draws a kind cannot catch its bug."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, find, settings

from weightcheck.conformance.properties.damaged_checkpoint import KINDS as DAMAGE
from weightcheck.conformance.properties.duplicate_tensor import KINDS as DUPLICATES
from weightcheck.conformance.properties.unexpected_tensor import KINDS as UNEXPECTED
from weightcheck.conformance.runner import examples

SEARCH = settings(
    max_examples=2000, database=None, deadline=None, phases=[Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# the families a kind needs (MoE for expert kinds; deepseek's layers past the last are MTP)
WHERE = {"expert_beyond": "qwen3_moe", "expert_forms": "qwen2_moe"}


def kind_is(kind):
    return lambda example: example.extras.get("kind") == kind


@pytest.mark.parametrize("kind", UNEXPECTED)
def test_each_unexpected_tensor_kind_is_drawn(kind):
    find(examples("unexpected_tensor", WHERE.get(kind, "llama")), kind_is(kind), settings=SEARCH)


def test_gpt2_mask_buffer_lookalikes_are_drawn():
    find(examples("unexpected_tensor", "gpt2"), lambda e: "attn.bias_scaled" in e.extras.get("name", ""), settings=SEARCH)


@pytest.mark.parametrize("kind", DUPLICATES)
def test_each_duplicate_kind_is_drawn(kind):
    find(examples("duplicate_tensor", WHERE.get(kind, "llama")), kind_is(kind), settings=SEARCH)


@pytest.mark.parametrize("kind", DAMAGE)
def test_each_damage_kind_is_drawn(kind):
    find(examples("damaged_checkpoint", "llama"), kind_is(kind), settings=SEARCH)


@pytest.mark.parametrize("how", ["one longer", "one shorter", "leading dimension", "flattened"])
def test_each_wrong_shape_is_drawn(how):
    find(examples("wrong_shape", "llama"), lambda e: how in e.extras["how"], settings=SEARCH)


@pytest.mark.parametrize("stored_as", ["float32", "bfloat16", "float16"])
def test_each_foreign_dtype_is_drawn(stored_as):
    find(examples("foreign_dtype", "qwen3_moe"), lambda e: e.extras["stored_as"] == stored_as, settings=SEARCH)


def test_a_weight_and_its_scale_are_cut_apart_in_either_order():
    from weightcheck.conformance.properties.hostile_stream import scale_pairs

    def apart(weight_first):
        def check(e):
            names = e.case.recipe.names
            for first, second in scale_pairs(e.case):
                if second in e.extras["splits"] and names[first].endswith(".weight") == weight_first:
                    return True
            return False

        return check

    for weight_first in (True, False):
        find(examples("hostile_stream", "llama"), apart(weight_first), settings=SEARCH)


def test_reload_after_processing_meets_fused_per_tensor_fp8():
    def fused_fp8(e):
        q = e.case.arch.quant
        return q is not None and q.method == "fp8_per_tensor" and not q.ignored

    find(examples("reload_processed", "llama"), fused_fp8, settings=SEARCH)
