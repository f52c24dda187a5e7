"""The same parameter twice (with and without the model's prefix, per-expert and fused experts,
one key in two shards) or an index that lies is refused or reported, never a silent pick."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.families import FAMILY_NAMES

PROPERTY = "duplicate_tensor"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_duplicate_or_misplaced_tensor_is_refused_or_reported(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
