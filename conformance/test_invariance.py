"""Order and sharding invariance: the same tensors in another key order or file split load the same."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.families import FAMILY_NAMES

PROPERTY = "invariance"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_layout_does_not_change_state(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
