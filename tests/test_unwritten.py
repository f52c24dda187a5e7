"""The fill the engine adapters give a model's parameters right after construction
(weightcheck.adapters.unwritten): the same value on every run, one no checkpoint holds."""

import pytest
import torch

from weightcheck.adapters.unwritten import fill_unwritten

FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_floating_parameters_read_nan(dtype):
    t = torch.zeros(3, 2, dtype=dtype)
    fill_unwritten([t])
    assert torch.isnan(t.float()).all()


@pytest.mark.parametrize(
    "dtype, bits", [(torch.int8, -1), (torch.int32, -1), (torch.uint8, 255), (torch.bool, True)], ids=str
)
def test_integer_parameters_have_every_bit_set(dtype, bits):
    t = torch.zeros(4, dtype=dtype)
    fill_unwritten([t])
    assert (t == bits).all()


def test_packed_float4_without_nan_has_every_bit_set():
    t = torch.zeros(4, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    fill_unwritten([t])
    assert t.view(torch.uint8).tolist() == [255] * 4


def test_the_fill_is_in_place_on_parameters_and_views():
    """Engines' parameters are nn.Parameters, some of them views of a fused buffer."""
    whole = torch.nn.Parameter(torch.zeros(4, 2), requires_grad=False)
    fill_unwritten([whole[:2]])
    assert torch.isnan(whole[:2]).all() and (whole[2:] == 0).all()
