"""The regression corpus: case files run through every property they apply to, before the
random examples.  ``fixtures/regressions/`` is bundled; ``--regressions DIR`` adds a
downstream repo's own; ``--replay CASE`` runs one case file and nothing else."""

import pytest

pytestmark = pytest.mark.conformance


def test_regression(weightcheck, regression):
    weightcheck.replay(regression.path, regression.property)
