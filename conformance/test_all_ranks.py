"""All ranks of a placement (pp x tp x ep, at most 8): each loads without error, holds exactly
its slice and tracks exactly its own parameters, and together they hold every checkpoint weight."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.families import FAMILY_NAMES

PROPERTY = "all_ranks"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_every_rank_loads_and_together_they_cover_the_checkpoint(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
