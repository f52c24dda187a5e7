"""Round trip: every runtime parameter holds exactly the checkpoint data it should, bit for bit."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.conformance.protocol import FAMILIES

PROPERTY = "roundtrip"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_state_matches_checkpoint(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
