"""All ranks of a placement (pp x tp x ep): each loads without error, holds exactly its slice and
tracks exactly its own parameters, and together they hold every checkpoint weight."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance import properties
from conformance.protocol import FAMILIES

pytestmark = pytest.mark.conformance

MAX_RANKS = 8  # keeps one example to a few dozen loads


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_every_rank_loads_and_together_they_cover_the_checkpoint(weightcheck, family, data):
    case = weightcheck.draw_case(data, family, max_ranks=MAX_RANKS)
    properties.all_ranks(weightcheck.loader, case)
