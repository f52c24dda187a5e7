"""A loader's own completeness check is right (the optional ``check_loaded`` hook).

After a load with one needed tensor dropped (scales, input scales and biases of FP8 modules
included), ``check_loaded(model, loaded)`` must raise and name what is missing; after a
complete load it must stay silent.  Loaders without the hook are reported as not supported."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.families import FAMILY_NAMES

PROPERTY = "check_loaded"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_completeness_check_names_what_is_missing(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
