"""Reload: a second checkpoint loaded into an already built model replaces every weight.

This is the weight sync of RL training and the reload after LoRA wrapping; state that a loader
keeps between loads (shard records, pending tensors) must not leak into the second one."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.families import FAMILY_NAMES

PROPERTY = "reload"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_second_load_replaces_the_first(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
