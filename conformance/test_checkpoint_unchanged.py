"""Loading leaves the checkpoint directory exactly as it was (content hash before and after)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.conformance.protocol import FAMILIES

PROPERTY = "checkpoint_unchanged"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_checkpoint_is_not_modified(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
