"""Reload after processing (RL weight sync): load, process, load a second checkpoint, process
again; the state equals a fresh load and processing of the second checkpoint, exactly (and a
loader that declares in_place_reload keeps every parameter's storage)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.families import FAMILY_NAMES

PROPERTY = "reload_processed"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_a_reload_after_processing_equals_a_fresh_load(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
