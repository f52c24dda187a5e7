"""A float tensor stored in another float dtype than the config's loads as its exact cast, or"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.families import FAMILY_NAMES

PROPERTY = "foreign_dtype"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_a_tensor_in_another_dtype_loads_as_its_cast_or_is_refused(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
