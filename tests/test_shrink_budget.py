"""The shrink budget (``Harness.shrink_budget``): once spent, a new candidate is rejected, but an
input that already ran runs again, as it ran before (Hypothesis may replay any input; one that
passed and is then rejected is a flaky test to it: "Inconsistent results from replaying a test
case! last: VALID, this: INVALID", seen once in CI on the reference loader)."""

import time

import pytest
from hypothesis.errors import UnsatisfiedAssumption

from weightcheck.arch import Arch, Placement
from weightcheck.conformance.harness import Failing, Harness, _key
from weightcheck.conformance.runner import Example
from weightcheck.conformance.search import adapter
from weightcheck.fixtures.case import Case, CheckpointRecipe
from weightcheck.reference_models.reference_loader import loader as reference


def _example(seed: int) -> Example:
    arch = Arch("llama", 4, 1, 2, 2, 2, 4, 8)
    return Example("roundtrip", Case(arch, Placement((1,)), CheckpointRecipe(seed, [["model.embed_tokens.weight"]], "default")))


# the harness's reject() is called here directly, outside a Hypothesis test, to see its decision
@pytest.mark.filterwarnings("ignore:Using `reject` outside a property-based test")
def test_after_the_budget_only_inputs_that_ran_run_again():
    harness = Harness(adapter(reference), shrink_budget=0.0)
    harness.current = "test"
    passed, failed, new = _example(1), _example(2), _example(3)
    harness._within_budget(passed)  # nothing failed yet: no budget runs
    harness._passed(passed)
    harness.failing["test"] = Failing(time.monotonic() - 1.0, {_key(failed)})
    harness._within_budget(passed)  # ran and passed before: runs again
    harness._within_budget(failed)  # the failing example: Hypothesis's final replay
    with pytest.raises(UnsatisfiedAssumption):
        harness._within_budget(new)
    assert harness.failing["test"].budget_spent


def test_without_a_budget_nothing_is_kept():
    harness = Harness(adapter(reference))
    harness.current = "test"
    harness._passed(_example(1))
    assert harness.passed == {}
