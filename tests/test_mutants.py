"""Every property fails against the mutant with the bug it targets, and the reference passes.

"A property that cannot fail is a defect": this module is the proof that each one can.
"""

import pytest

from weightcheck.families import FAMILY_NAMES
from weightcheck.conformance.runner import PROPERTIES
from weightcheck.reference_models.reference_loader import loader as reference

from .helpers import search
from .mutants import MUTANTS


@pytest.mark.parametrize(
    "mutant, family",
    [(m, f) for m in MUTANTS for f in m.families],
    ids=lambda v: v.name if hasattr(v, "name") and not isinstance(v, str) else str(v),
)
def test_mutant_is_caught(mutant, family):
    failure = search(mutant.loader, mutant.caught_by, family, max_examples=200)
    assert failure is not None, f"{mutant.name} ({mutant.bug}) survived {mutant.caught_by}"
    assert mutant.message in str(failure), str(failure)


@pytest.mark.parametrize("prop", PROPERTIES)
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_reference_loader_passes(prop, family):
    if prop == "lora_equivalence" and family in ("gpt2", "deepseek_v32"):
        pytest.skip(f"{family} has no LoRA wrapping")
    failure = search(reference, prop, family, max_examples=25)
    assert failure is None, str(failure)


def test_every_property_has_a_mutant():
    assert {m.caught_by for m in MUTANTS} == set(PROPERTIES)


@pytest.mark.parametrize("prop", ("roundtrip", "missing_tensor", "invariance"))
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_load_that_does_nothing_fails_every_value_property(prop, family):
    from .mutants import BY_NAME

    assert search(BY_NAME["load_does_nothing"].loader, prop, family, max_examples=20) is not None
