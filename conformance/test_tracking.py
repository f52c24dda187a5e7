"""Exact tracking: the set ``load`` returns is exactly this rank's runtime parameters."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance import properties
from conformance.protocol import FAMILIES

pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_loaded_set_is_exact(weightcheck, family, data):
    case = weightcheck.draw_case(data, family)
    try:
        properties.tracking(weightcheck.loader, case)
    except properties.NotSupported as reason:
        pytest.skip(f"not supported by the loader: {reason}")
