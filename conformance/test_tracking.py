"""Exact tracking: the set ``load`` returns is exactly this rank's runtime parameters.

A loader whose ``load`` returns None does no tracking: reported as skipped (not supported)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.families import FAMILY_NAMES

PROPERTY = "tracking"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_loaded_set_is_exact(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
