"""A damaged checkpoint (a file cut short, a lying header or offsets, a missing shard) is refused
with an exception; a stale shard the index does not name is ignored; the directory never
changes."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.families import FAMILY_NAMES

PROPERTY = "damaged_checkpoint"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_a_damaged_checkpoint_is_refused(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
