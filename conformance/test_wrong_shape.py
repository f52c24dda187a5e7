"""A tensor of the wrong shape is refused, never narrowed, padded, reshaped or broadcast."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.families import FAMILY_NAMES

PROPERTY = "wrong_shape"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_a_tensor_of_the_wrong_shape_is_refused(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
