"""Parameters with their loaders, and the checks every loader makes: the bottom of the reference
loader, shared by the layers (``layers.py``, ``moe.py``) and the quant methods (``quant.py``).

Parameters start as NaN rather than zeros: a zero is a plausible weight (and exactly what a
vocab padding row must hold), so an entry the loader never wrote must be impossible to mistake
for one it did.  Loaders raise ``ValueError`` on a checkpoint tensor of the wrong shape instead of
``assert``-ing, so the check survives ``python -O``.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import torch
from torch import nn


def divide(numerator: int, denominator: int, what: str) -> int:
    """Exact division; a TP size that does not divide a dimension is a build error, not a floor."""
    if denominator <= 0 or numerator % denominator:
        raise ValueError(f"{what}: {numerator} is not divisible by {denominator}")
    return numerator // denominator


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def new_parameter(
    shape: Sequence[int],
    dtype: torch.dtype,
    device: str | torch.device,
    weight_loader,
    shard_ids: tuple[Hashable, ...] | None = None,
) -> nn.Parameter:
    """An uninitialised parameter, NaN-filled so that a tensor never loaded stays visible.

    ``shard_ids`` names the checkpoint pieces a fused parameter is built from; the tracker in
    ``tracking.py`` counts the parameter as loaded only once all of them have arrived.
    """
    data = torch.empty(tuple(shape), dtype=dtype, device=device)
    if data.is_floating_point():
        data.fill_(float("nan"))
    param = nn.Parameter(data, requires_grad=False)
    param.weight_loader = weight_loader
    param.shard_ids = shard_ids
    return param


def check_shape(loaded: torch.Tensor, expected: Sequence[int], what: str) -> None:
    if tuple(loaded.shape) != tuple(expected):
        raise ValueError(
            f"{what}: checkpoint tensor has shape {tuple(loaded.shape)}, expected {tuple(expected)}"
        )
