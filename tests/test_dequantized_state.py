"""Loaders that dequantise FP8 at load (``fp8_dequantized_state``, as transformers on CPU) are
held to the dequantisation definition: exact in the model dtype, no scales."""

from dataclasses import replace

from hypothesis import given, settings

from weightcheck.conformance.assertions import PropertyFailure
from weightcheck.conformance.properties import PROPERTIES
from weightcheck.capabilities import Capabilities, FEATURES
from weightcheck.reference_models.reference_loader.layers import LinearBase
from weightcheck.reference_models.reference_loader.loader import ReferenceLoader
from weightcheck.strategies.cases import fp8_cases

from weightcheck.conformance.search import adapter
from weightcheck.conformance.profiles import CASE_HEALTH_CHECKS

CAPS = Capabilities(families={"llama"}, features=set(FEATURES) | {"fp8_dequantized_state"})


class DequantizingLoader(ReferenceLoader):
    """The reference loader, presenting each FP8 layer's weight dequantised and no scales."""

    capabilities = CAPS

    def __init__(self, rounding_slip: bool = False):
        self.rounding_slip = rounding_slip

    SCALES = ("weight_scale", "weight_scale_inv", "input_scale")

    def load(self, model, checkpoint):
        return {n for n in super().load(model, checkpoint) if not n.endswith(self.SCALES)}

    def state(self, model):
        state = {}
        layers = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, LinearBase)}
        for name, param in model.named_parameters():
            if name.endswith(self.SCALES):
                continue
            layer = layers.get(name)
            if layer is not None and layer.quant is not None:
                value = layer.dequantized_weight()
                if self.rounding_slip:  # dequantise in the model dtype: rounds twice
                    value = (layer.weight.data.to(layer.dtype) * (value.float() / layer.weight.data.float()).nan_to_num(1.0).to(layer.dtype))
                state[name] = value
            else:
                state[name] = param
        return state


SETTINGS = settings(max_examples=25, deadline=None, database=None, derandomize=True,
                    suppress_health_check=CASE_HEALTH_CHECKS)


@SETTINGS
@given(case=fp8_cases("llama", CAPS, ("fp8_per_tensor", "fp8_block")))
def test_a_dequantizing_loader_passes_against_the_definition(case):
    loader = adapter(DequantizingLoader())
    PROPERTIES["roundtrip"].run(loader, case, {})
    PROPERTIES["tracking"].run(loader, case, {})


def test_a_dequantizing_loader_that_rounds_differently_fails():
    failures = []

    @SETTINGS
    @given(case=fp8_cases("llama", CAPS, ("fp8_block",)))
    def run(case):
        case = replace(case, arch=replace(case.arch, dtype="bfloat16"))
        try:
            PROPERTIES["roundtrip"].run(adapter(DequantizingLoader(rounding_slip=True)), case, {})
        except PropertyFailure as failure:
            failures.append(failure)

    run()
    assert failures, "a dequantisation in the model dtype was accepted"
    assert "dequantised with" in str(failures[0])
