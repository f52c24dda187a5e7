"""Exact tracking: the set ``load`` returns is exactly this rank's runtime parameters.

A loader whose ``load`` returns None does no tracking: reported as skipped (not supported)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.conformance.protocol import FAMILIES

PROPERTY = "tracking"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_loaded_set_is_exact(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
