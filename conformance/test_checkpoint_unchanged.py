"""Loading leaves the checkpoint directory exactly as it was (content hash before and after)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.families import FAMILY_NAMES

PROPERTY = "checkpoint_unchanged"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_checkpoint_is_not_modified(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
