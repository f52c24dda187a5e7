"""Every property fails against the mutant with the bug it targets, and the reference passes.

"A property that cannot fail is a defect": this module is the proof that each one can.
"""

import pytest

from weightcheck.families import FAMILY_NAMES
from weightcheck.conformance.properties import PROPERTY_NAMES as PROPERTIES
from weightcheck.reference_models.reference_loader import loader as reference

from weightcheck.conformance.properties import PROPERTIES as PROPERTIES_BY_NAME
from weightcheck.conformance.search import run_search, search
from weightcheck.families import FAMILIES
from weightcheck.reference_models.mutants import MUTANTS


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
    """The control: every property it supports runs (a skip is a failure here) and passes."""
    if not FAMILIES[family].lora and PROPERTIES_BY_NAME[prop].lora:
        pytest.skip(f"{family} has no LoRA wrapping")
    result = run_search(reference, prop, family, max_examples=25)
    assert result.skipped is None, f"the reference loader skipped {prop}[{family}]: {result.skipped}"
    assert not result.failed, str(result.failure)


def test_every_property_has_a_mutant():
    assert {m.caught_by for m in MUTANTS} == set(PROPERTIES)


@pytest.mark.parametrize("prop", ("roundtrip", "missing_tensor", "invariance"))
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_load_that_does_nothing_fails_every_value_property(prop, family):
    from weightcheck.reference_models.mutants import BY_NAME

    assert search(BY_NAME["load_does_nothing"].loader, prop, family, max_examples=20) is not None
