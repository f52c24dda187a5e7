"""Round trip: every runtime parameter holds exactly the checkpoint data it should, bit for bit."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.families import FAMILY_NAMES

PROPERTY = "roundtrip"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_state_matches_checkpoint(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
