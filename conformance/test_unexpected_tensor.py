"""An unexpected tensor is refused (an error naming it) or reported (``LoadReport.unexpected``),
never silently ignored: a layer or expert the model does not have, a scale next to an
unquantised module, a LoRA tensor in a base checkpoint, a misspelled name, a name that only
looks like a skippable buffer."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.families import FAMILY_NAMES

PROPERTY = "unexpected_tensor"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_unexpected_tensor_is_refused_or_reported(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
