"""A missing tensor is never silently accepted.

Drop any one checkpoint tensor this rank needs: the loader must raise, or report as loaded
exactly the parameters that do not depend on it (and those must still be right).
"""

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from conformance import properties
from conformance.protocol import FAMILIES

pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_missing_tensor_is_detected(weightcheck, family, data):
    case = weightcheck.draw_case(data, family)
    dropped = data.draw(st.sampled_from(properties.needed_tensors(case)), label="dropped tensor")
    how = properties.missing_tensor(weightcheck.loader, case, dropped)
    event(f"missing tensor detected by: {how}")
