"""LoRA wrapping: a wrapped model (``...base_layer.weight``) loads exactly the base weights the
unwrapped one does, and tracks the ``base_layer`` parameters, never the LoRA A/B tensors."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.families import FAMILY_NAMES

PROPERTY = "lora_equivalence"
pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_wrapped_model_loads_the_same_base_weights(weightcheck, family, data):
    weightcheck.check(PROPERTY, data, family)
