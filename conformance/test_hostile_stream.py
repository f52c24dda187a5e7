"""A hostile weight stream (tensors overwritten once the next is asked for, the stream cut into
several load calls at arbitrary points, a weight and its scale apart) loads exactly."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.families import FAMILY_NAMES

PROPERTY = "hostile_stream"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_a_hostile_weight_stream_loads_exactly(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
