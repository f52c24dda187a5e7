"""The GPU-marked suite: the same properties with the model on CUDA, and CUDA FP8 checks.

Without a CUDA device every test here is skipped with the reason, and the run passes.  Select
it alone with ``-m gpu``; leave it out with ``-m "not gpu"``.  The checks themselves are in
``weightcheck.conformance.device_checks`` (the project's tests also run them on CPU).
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from weightcheck.conformance import device_checks
from weightcheck.families import FAMILY_NAMES
from weightcheck.conformance.runner import FP8_FAMILIES, PROPERTIES

PROPERTY = "gpu"
pytestmark = [pytest.mark.conformance, pytest.mark.gpu]


@pytest.fixture
def cuda(weightcheck):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the GPU-marked checks need one (torch.cuda.is_available() is False)")
    if not weightcheck.loader.capabilities.supports("cuda"):
        pytest.skip("not supported by the loader: cuda (building on placement.device)")
    return weightcheck


def _needs_fp8_matmul():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip(f"torch._scaled_mm needs an FP8 GPU (sm_89+), this is sm_{torch.cuda.get_device_capability()}")


@pytest.mark.parametrize("prop", PROPERTIES)
@pytest.mark.parametrize("family", FAMILY_NAMES)
@given(data=st.data())
def test_property_on_cuda(cuda, prop, family, data):
    cuda.check(prop, data, family, device="cuda")


@pytest.mark.parametrize("family", sorted(FP8_FAMILIES))
@given(data=st.data())
def test_fp8_bytes_are_preserved_on_cuda(cuda, family, data):
    cuda.check_device(device_checks.bytes_on_device, data, family, FP8_FAMILIES[family])


@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 40),
    block=st.none() | st.tuples(st.integers(1, 9), st.integers(1, 9)),
    seed=st.integers(0, 2**31),
)
def test_dequantization_on_cuda_equals_the_cpu_definition(cuda, rows, cols, block, seed):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=gen).to(torch.float8_e4m3fn)
    shape = () if block is None else (-(-rows // block[0]), -(-cols // block[1]))
    scale = torch.exp2(torch.rand(shape, generator=gen) * 6 - 9)
    device_checks.dequantize_matches_cpu(weight, scale, block, "cuda")


@pytest.mark.parametrize("family", sorted(f for f, m in FP8_FAMILIES.items() if "fp8_per_tensor" in m))
@given(data=st.data())
def test_scaled_mm_with_loaded_fp8_weights(cuda, family, data):
    _needs_fp8_matmul()
    cuda.check_device(device_checks.scaled_mm_matches, data, family, ("fp8_per_tensor",))


@pytest.mark.parametrize("family", sorted(FP8_FAMILIES))
@given(data=st.data())
def test_post_load_processing_preserves_each_linear_layer(cuda, family, data):
    cuda.check_device(device_checks.post_load_preserves_function, data, family, FP8_FAMILIES[family])
