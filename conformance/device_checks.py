"""FP8 checks of what happens on the model's device (the GPU-marked suite runs them on CUDA).

Plain functions of (loader, case) like ``properties``; they take the device from
``case.placement.device``, so the project's own tests run them on CPU too and CI exercises
their logic on machines without a GPU.  Tolerances, where there are any, are stated at each
check and derived from the one rounding step the check allows.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from weightcheck.fixtures.case import Case
from weightcheck.reference_models.oracle import dequantize
from weightcheck.reference_models.oracle.expected import dequantized_weights

from .assertions import fail, same_bits
from .properties import PROPERTIES
from .properties.base import (
    LoaderRaised,
    NotSupported,
    call,
    context,
    expected,
    raised_title,
    scratch,
    tensors_of,
    write,
)
from .protocol import LoaderAdapter

FP8 = torch.float8_e4m3fn
# e4m3 has 3 mantissa bits: rounding to it moves a normal value by at most 2**-4 of itself,
# and a subnormal one by at most half the subnormal spacing 2**-9, times the scale.
FP8_RELATIVE, FP8_SUBNORMAL = 2.0**-4, 2.0**-10
EMBEDDINGS = ("embed_tokens.", "lm_head.", ".wte.", ".wpe.")


def on_device(case: Case, device: str) -> Case:
    return replace(case, placement=replace(case.placement, device=device))


def _generator(case: Case, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(case.recipe.value_seed * 7919 + salt)


def _load_on_device(loader: LoaderAdapter, case: Case, label: str):
    with scratch() as path:
        tensors = tensors_of(case)
        checkpoint = write(case, path, tensors=tensors)
        try:
            model = call("build", loader.build, case.arch, case.placement)
            call("load", loader.load, model, checkpoint)
            state = call("state", loader.state, model)
        except LoaderRaised as err:
            fail(raised_title(label), [str(err)], context(case))
    return model, state, tensors


def bytes_on_device(loader: LoaderAdapter, case: Case) -> None:
    """The loaded state is on the placement's device and holds the checkpoint's bytes there
    (FP8 weights compared byte for byte, like every parameter)."""
    title = f"device: the state is not on {case.placement.device}"
    _, state, _ = _load_on_device(loader, case, "device")
    wanted = torch.device(case.placement.device).type
    elsewhere = sorted(n for n, t in state.items() if t.device.type != wanted)
    if elsewhere:
        fail(title, [f"parameters not on {wanted}: {elsewhere}"], context(case))
    PROPERTIES["roundtrip"].run(loader, case, {})


def dequantize_matches_cpu(
    weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None, device: str
) -> None:
    """The dequantisation definition gives the same bits on ``device`` as on CPU (a float32
    product is correctly rounded on both, so no tolerance)."""
    here = dequantize(weight, scale, block)
    there = dequantize(weight.to(device), scale.to(device), block).cpu()
    if not same_bits(here, there):
        diff = (here != there).nonzero()
        fail(
            f"dequantisation on {device} differs from the CPU definition",
            [f"{len(diff)} of {here.numel()} elements differ, first at {diff[0].tolist()}"],
            f"weight {list(weight.shape)}, block {block}",
        )


def _fp8_shards(state, exp):
    """(runtime weight, rows of one shard, that shard's per-tensor scale) of each FP8 shard."""
    for name, param in exp.params.items():
        if param.value.dtype != FP8 or param.value.dim() != 2:
            continue
        scale = state.get(name.removesuffix("weight") + "weight_scale")
        if scale is None:
            continue
        for i, piece in enumerate(param.pieces):
            yield name, piece.dst[0], scale.reshape(-1)[i], piece.label


def scaled_mm_matches(loader: LoaderAdapter, case: Case, batch: int = 16) -> None:
    """``torch._scaled_mm`` with each loaded per-tensor FP8 shard and its loaded scale equals
    ``x @ W.T`` for an FP8 input ``x``, W the checkpoint's dequantised weight (the oracle's,
    exact in float64): the only rounding is the bfloat16 output, at most 2**-9 of
    |x| @ |W|.T, allowed 2**-7 for accumulation order."""
    if case.arch.quant is None or case.arch.quant.method != "fp8_per_tensor":
        raise ValueError("scaled_mm_matches needs a per-tensor FP8 case")
    title = "scaled matmul: torch._scaled_mm with the loaded FP8 weight and scale is wrong"
    _, state, tensors = _load_on_device(loader, case, "scaled matmul")
    exp = expected(case, tensors, loader)
    deq = dequantized_weights(case.arch, case.placement, tensors, case.recipe.format)
    device = torch.device(case.placement.device)
    gen = _generator(case, 1)
    problems = []
    for name, rows, scale, label in _fp8_shards(state, exp):
        w = state[name].detach()[rows]
        n, k = w.shape
        pad_n, pad_k = -n % 16, -k % 16  # _scaled_mm wants multiples of 16: zeros add nothing
        w16 = torch.nn.functional.pad(w.float(), (0, pad_k, 0, pad_n)).to(FP8).to(device)
        x = torch.randn(batch, k, generator=gen)
        sx = x.abs().max().clamp(min=1e-12) / 448.0
        xq = torch.nn.functional.pad(x / sx, (0, pad_k)).to(FP8)
        sw = scale.detach().float().reshape(()).to(device)
        got = torch._scaled_mm(
            xq.to(device), w16.t(), scale_a=sx.to(device), scale_b=sw, out_dtype=torch.bfloat16
        )[:, :n].double().cpu()
        xd = xq[:, :k].double() * sx.double()
        wd = deq[name][rows].double()
        want = xd @ wd.t()
        bound = 2.0**-7 * (xd.abs() @ wd.abs().t()) + 1e-30
        off = _outputs_off(got, want, bound)
        if off:
            problems.append(f"{name} rows {rows.start}:{rows.stop} ({label}): {off}")
    if problems:
        fail(title, problems, context(case))


def _outputs_off(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor) -> str | None:
    """How many outputs lie outside ``want +- bound``, and the first of them (None: none)."""
    bad = (got - want).abs() > bound
    if not bad.any():
        return None
    i, j = (int(v) for v in bad.nonzero()[0])
    return (
        f"{int(bad.sum())} of {bad.numel()} outputs off, first [{i}, {j}]: "
        f"got {got[i, j]:g}, expected {want[i, j]:g} +- {bound[i, j]:g}"
    )


def _linear_modules(exp) -> dict[str, str]:
    """Canonical linear module name -> its weight parameter (2-D, not an embedding)."""
    return {
        name.removesuffix(".weight").replace(".base_layer", ""): name
        for name, param in exp.params.items()
        if name.endswith(".weight") and param.value.dim() == 2 and not any(e in name for e in EMBEDDINGS)
    }


def post_load_preserves_function(loader: LoaderAdapter, case: Case, batch: int = 4) -> None:
    """After ``process_weights_after_loading``, every linear layer of the rank computes
    ``x @ W.T + b`` with W the dequantised checkpoint weight, on random ``x``.

    Tolerance per output: 2**-4 |x| @ |W|.T + 2**-10 * max scale * sum |x| (one requantisation
    to FP8, e.g. fused shards brought to their largest scale) + 2**-18 |x| @ |W|.T (float32
    arithmetic); unquantised layers get only the float32 term.
    """
    process = loader.hook("process_weights_after_loading")
    forward = loader.hook("linear_forward")
    if process is None or forward is None:
        raise NotSupported("the loader has no process_weights_after_loading or linear_forward hook")
    title = "post-load processing: a linear layer no longer computes x @ W.T + b"
    model, _, tensors = _load_on_device(loader, case, "post-load processing")
    exp = expected(case, tensors, loader)
    deq = dequantized_weights(case.arch, case.placement, tensors, case.recipe.format)
    try:
        call("process_weights_after_loading", process, model)
    except LoaderRaised as err:
        fail(raised_title("post-load processing"), [str(err)], context(case))
    device = torch.device(case.placement.device)
    gen = _generator(case, 2)
    problems = []
    for module, weight_name in sorted(_linear_modules(exp).items()):
        w = (deq[weight_name] if weight_name in deq else exp.params[weight_name].value).double()
        bias = exp.params.get(weight_name.removesuffix("weight") + "bias")
        x = torch.randn(batch, w.shape[1], generator=gen)
        try:
            got = call("linear_forward", forward, model, module, x.to(device))
        except LoaderRaised as err:
            problems.append(f"{module}: {err}")
            continue
        got = got.detach().double().cpu()
        want = x.double() @ w.t() + (bias.value.double() if bias is not None else 0)
        mag = x.double().abs() @ w.abs().t()
        scales = [
            exp.params[s].value.max().item()
            for s in (weight_name.removesuffix("weight") + k for k in ("weight_scale", "weight_scale_inv"))
            if s in exp.params
        ]
        bound = 2.0**-18 * mag + 1e-12
        if weight_name in deq:
            smax = max(scales) if scales else 0.0
            bound = bound + FP8_RELATIVE * mag + FP8_SUBNORMAL * smax * x.double().abs().sum(1, keepdim=True)
        if tuple(got.shape) != tuple(want.shape):
            problems.append(f"{module}: output shape {list(got.shape)}, expected {list(want.shape)}")
            continue
        off = _outputs_off(got, want, bound)
        if off:
            problems.append(f"{module}: {off}")
    if problems:
        fail(title, problems, context(case))
