"""A real engine's parameters before its loader writes them, made visible and the same on every
run.

vLLM and SGLang allocate parameters with ``torch.empty`` (their ``create_weights``): until the
load writes them they hold whatever the allocator hands out, often zeros from fresh pages,
sometimes the data of a freed tensor.  A region the loader never writes then passes or fails by
chance: in CI, a DeepSeek-V3.2 lm_head that vLLM never loads (finding 14) once held exactly
what a fresh model's held, and a comparison of the two passed.  So the adapters fill every
parameter that ``state`` reports right after construction, as the reference loader's NaN
initialisation does: NaN in the floating dtypes (float8 included), every bit set in the
integer ones and in the packed formats that have no NaN.  The fill replaces only what the constructor left:
values a constructor sets on purpose and no checkpoint holds (vLLM's KV-cache scales) are no
part of ``state`` and are left as they are.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def fill_unwritten(params: Iterable[torch.Tensor]) -> None:
    """Fill each tensor in place: NaN where its dtype has one, else every bit set."""
    with torch.no_grad():
        for p in params:
            if p.is_meta or p.numel() == 0:
                continue
            if p.dtype == torch.bool:
                p.fill_(True)
            elif p.dtype.is_floating_point or p.dtype.is_complex:
                try:
                    p.fill_(float("nan"))
                except (RuntimeError, TypeError):  # no NaN (packed float4): every bit set
                    p.view(torch.uint8).fill_(0xFF)
            else:
                p.fill_(-1 if p.dtype.is_signed else torch.iinfo(p.dtype).max)
