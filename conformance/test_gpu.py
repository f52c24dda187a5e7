"""The GPU-marked suite: the same properties with the model on CUDA, and CUDA FP8 checks.

Without a CUDA device every test here is skipped with the reason, and the run passes.  Select
it alone with ``-m gpu``; leave it out with ``-m "not gpu"``.  The checks themselves are in
``weightcheck.conformance.device_checks``.  ``--weightcheck-gpu-device=cpu`` runs this module
on the CPU as a stand-in (the project's own tests do, so the module is known to run).
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.conformance import device_checks
from weightcheck.conformance.properties import PROPERTY_NAMES
from weightcheck.families import FAMILIES, FAMILY_NAMES

PROPERTY = "gpu"
pytestmark = [pytest.mark.conformance, pytest.mark.gpu]
FP8_FAMILIES = {f.name: f.fp8_methods for f in FAMILIES.values() if f.fp8_methods}
PER_TENSOR_FAMILIES = sorted(f for f, m in FP8_FAMILIES.items() if "fp8_per_tensor" in m)


@pytest.fixture(scope="session")
def device(weightcheck, pytestconfig) -> str:
    """The device the GPU-marked checks run on (session-scoped: Hypothesis refuses
    function-scoped fixtures under ``@given``)."""
    chosen = pytestconfig.getoption("weightcheck_gpu_device")
    if chosen is None:
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device: the GPU-marked checks need one (torch.cuda.is_available() is False)")
        chosen = "cuda"
    if chosen.startswith("cuda") and not weightcheck.loader.capabilities.supports("cuda"):
        pytest.skip("not supported by the loader: cuda (building on placement.device)")
    return chosen


def _needs_fp8_matmul(device: str) -> None:
    if device.startswith("cuda") and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip(f"torch._scaled_mm needs an FP8 GPU (sm_89+), this is sm_{torch.cuda.get_device_capability()}")


@pytest.mark.parametrize("prop", PROPERTY_NAMES)
@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_property_on_cuda(weightcheck, device, prop, family, data):
    weightcheck.check(prop, data, family, device=device)


@pytest.mark.parametrize("family", sorted(FP8_FAMILIES))
@given(data=st.data())
def test_fp8_bytes_are_preserved_on_cuda(weightcheck, device, family, data):
    weightcheck.check_device(device_checks.bytes_on_device, data, family, FP8_FAMILIES[family], device)


@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 40),
    block=st.none() | st.tuples(st.integers(1, 9), st.integers(1, 9)),
    seed=st.integers(0, 2**31),
)
def test_dequantization_on_cuda_equals_the_cpu_definition(device, rows, cols, block, seed):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=gen).to(torch.float8_e4m3fn)
    shape = () if block is None else (-(-rows // block[0]), -(-cols // block[1]))
    scale = torch.exp2(torch.rand(shape, generator=gen) * 6 - 9)
    device_checks.dequantize_matches_cpu(weight, scale, block, device)


@pytest.mark.parametrize("family", PER_TENSOR_FAMILIES)
@given(data=st.data())
def test_scaled_mm_with_loaded_fp8_weights(weightcheck, device, family, data):
    _needs_fp8_matmul(device)
    weightcheck.check_device(device_checks.scaled_mm_matches, data, family, ("fp8_per_tensor",), device)


@pytest.mark.parametrize("family", sorted(FP8_FAMILIES))
@given(data=st.data())
def test_post_load_processing_preserves_each_linear_layer(weightcheck, device, family, data):
    weightcheck.check_device(
        device_checks.post_load_preserves_function, data, family, FP8_FAMILIES[family], device
    )
