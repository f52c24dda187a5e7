"""The bundled regression corpus: each seed case passes on the reference loader through every
property it applies to, and fails on the mutant that reproduces its seed bug."""

from pathlib import Path

import pytest

from weightcheck.conformance.assertions import PropertyFailure
from weightcheck.conformance.casefiles import read_case_file
from weightcheck.conformance.properties import PROPERTIES
from weightcheck.conformance.runner import Example, run_example
from weightcheck.reference_models.reference_loader import loader as reference

from weightcheck.conformance.search import adapter
from weightcheck.reference_models.mutants import BY_NAME

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "regressions"
CAUGHT_BY = {
    "seed-38074-jais-conv1d-tied-masks": [
        "conv1d_not_transposed",
        "tied_lm_head_not_skipped",
        "masked_bias_not_skipped",
    ],
    "seed-41086-missing-bias-untracked": ["module_exempted_wholesale"],
    "seed-37114-lora-experts-base-layer": ["expert_mapping_without_base_layer"],
    "seed-42716-moe-keyword-ids": ["moe_kwargs_dropped"],
    "seed-42944-pp-skips-other-ranks-layers": ["router_without_pp_guard"],
    "seed-41086-fp8-quantized-module-exempted": ["quantized_module_exempted"],
    "seed-42944-fp8-indexer-pp": ["indexer_lookup_before_pp_check", "pending_wk_per_load_call"],
}


def test_corpus_has_one_case_per_seed():
    assert sorted(p.stem for p in CORPUS.glob("*.json")) == sorted(CAUGHT_BY)


@pytest.mark.parametrize("stem", sorted(CAUGHT_BY))
def test_reference_passes_every_applicable_property(stem):
    example, _ = read_case_file(CORPUS / f"{stem}.json")
    loader = adapter(reference)
    for prop, prop_obj in PROPERTIES.items():
        family = example.case.arch.family
        if prop_obj.skip_reason(family, loader) is None and prop_obj.not_applicable(example.case) is None:
            runs = [example.extras] if prop == example.property else prop_obj.replay_extras(example.case)
            for extras in runs:
                run_example(loader, Example(prop, example.case, extras))


@pytest.mark.parametrize("stem, mutant", [(s, m) for s, ms in CAUGHT_BY.items() for m in ms])
def test_seed_mutant_fails_its_case(stem, mutant):
    example, body = read_case_file(CORPUS / f"{stem}.json")
    with pytest.raises(PropertyFailure):
        run_example(adapter(BY_NAME[mutant].loader), example)
