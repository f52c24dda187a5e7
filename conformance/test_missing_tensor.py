"""A missing tensor is never silently accepted.

Drop any one checkpoint tensor this rank needs: the loader must raise, or report as loaded
exactly the parameters that do not depend on it (and those must still be right)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.families import FAMILY_NAMES

PROPERTY = "missing_tensor"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_missing_tensor_is_detected(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
