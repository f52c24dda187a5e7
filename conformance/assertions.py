"""Comparing a loader's state with the oracle, and saying precisely what is wrong.

Comparisons are bit-exact (``torch.equal`` on the values; the checkpoint and runtime dtypes are
the same, so there is no rounding anywhere).  A failure names the runtime parameter, the region
(rows, columns, shard, tp rank) and the checkpoint tensor and slice that belongs there.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterable, Iterator, Mapping, NoReturn

import torch

from weightcheck.reference_models.oracle import Expected, ExpectedParam, Piece

MAX_REPORTED = 5  # problems shown by default; every one under -vv (``full_report``)
_FULL: ContextVar[bool] = ContextVar("weightcheck_full_report", default=False)


@contextlib.contextmanager
def full_report(on: bool) -> Iterator[None]:
    """Show every problem and the case as JSON in failure messages inside the block (-vv)."""
    token = _FULL.set(on)
    try:
        yield
    finally:
        _FULL.reset(token)


def detailed() -> bool:
    return _FULL.get()


class PropertyFailure(AssertionError):
    """A conformance property does not hold; the message says where and how to replay."""


def _fmt_slice(s: slice | int, full: int) -> str:
    if isinstance(s, int):
        return str(s)
    if s.start in (0, None) and s.stop in (full, None):
        return ":"
    return f"{s.start}:{s.stop}"


def describe_region(dst: tuple, shape: tuple[int, ...]) -> str:
    """``rows 4:6``, ``rows 0:2, columns 2:4``, ``local expert 1, rows 0:3``, or ``all``."""
    prefix = []
    if dst and isinstance(dst[0], int):  # a stacked expert tensor: the local expert index
        prefix, dst, shape = [f"local expert {dst[0]}"], dst[1:], shape[1:]
    words = ("rows", "columns") if len(shape) > 1 else ("elements",)
    parts = [
        f"{words[d]} {_fmt_slice(s, shape[d])}"
        for d, s in enumerate(dst)
        if d < len(words) and _fmt_slice(s, shape[d]) != ":"
    ]
    return ", ".join(prefix + parts) or "all"


def describe_source(piece: Piece, shapes: Mapping[str, tuple[int, ...]]) -> str:
    """The checkpoint slice in the checkpoint's own coordinates, e.g. ``name[:, 16:32] transposed``."""
    src = piece.source
    if src is None:
        return "zeros"
    index: list = list(piece.src)
    if src.rows is not None and index:
        s = index[0]
        index[0] = slice(s.start + src.rows[0], s.stop + src.rows[0])
    if src.transpose:
        index = index[::-1]
    shape = list(shapes[src.name])
    if src.select is not None:
        index = [src.select] + index
    text = ", ".join(_fmt_slice(s, shape[d]) for d, s in enumerate(index))
    text = f"{src.name}[{text}]" if text.strip(":, ") else src.name
    if src.scale is not None:
        text = f"{text} dequantised with {src.scale} (float32 product, then the model dtype)"
    return text + (" transposed" if src.transpose else "")


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _as_bits(x: torch.Tensor) -> torch.Tensor:
    """The tensor as integers of its element size: bit-exact ``==`` for any dtype (FP8 too)."""
    return x.contiguous().view(_INT_OF_SIZE[x.element_size()])


def _window(view: torch.Tensor, got: torch.Tensor) -> tuple[slice, ...] | None:
    """The slices of ``view`` whose bits are exactly ``got`` (same rank), or None."""
    if view.dim() != got.dim() or any(g > v for g, v in zip(got.shape, view.shape)):
        return None
    bits, want = _as_bits(view), _as_bits(got)
    first = want.reshape(-1)[0]
    for start in (bits == first).nonzero().tolist():
        window = tuple(slice(a, a + n) for a, n in zip(start, got.shape))
        if all(w.stop <= n for w, n in zip(window, view.shape)) and torch.equal(bits[window], want):
            return window
    return None


def holds_instead(got: torch.Tensor, tensors: Mapping[str, torch.Tensor] | None) -> str | None:
    """``holds NAME[a:b, :]`` when ``got`` is exactly a slice of a checkpoint tensor (k's rows
    holding v's, q_norm holding k_norm, an expert holding its neighbour's), possibly of its
    transpose or of one expert of a fused 3-D tensor; None when it is none of them."""
    if not tensors or got.numel() == 0 or got.dim() > 2:
        return None
    got = got.detach().cpu()
    for name, tensor in tensors.items():
        if tensor.dtype != got.dtype or tensor.numel() < got.numel():
            continue
        views = [(tensor, "", "")]
        if tensor.dim() == 2:
            views.append((tensor.t(), "", " transposed"))
        if tensor.dim() == 3:
            views += [(tensor[e], f"{e}, ", "") for e in range(tensor.shape[0])]
        for view, prefix, suffix in views:
            window = _window(view, got)
            if window is not None:
                text = ", ".join(_fmt_slice(w, n) for w, n in zip(window, view.shape))
                return f"it holds {name}[{prefix}{text}]{suffix}"
    return None


def _what_it_holds(value: torch.Tensor, tensors) -> str | None:
    """What a parameter that should not exist holds: a checkpoint tensor's slice, possibly
    followed by vocab padding (zero rows), as an embedding built where it need not be is."""
    found = holds_instead(value, tensors)
    if found or value.dim() != 2 or value.shape[0] < 2:
        return found
    nonzero = value.reshape(value.shape[0], -1).ne(0).any(dim=1).nonzero()
    last = int(nonzero.max()) + 1 if len(nonzero) else 0
    if 0 < last < value.shape[0]:
        found = holds_instead(value[:last], tensors)
        if found:
            return f"{found} (then {value.shape[0] - last} zero rows of padding)"
    return None


def _hint(actual: torch.Tensor, expected: torch.Tensor, tensors=None) -> str:
    """A guess at what went wrong, from what the region holds instead."""
    if expected.dtype == torch.float8_e4m3fn:  # few ops exist for FP8: compare its values
        actual_f, expected_f = actual.float(), expected.float()
    else:
        actual_f, expected_f = actual, expected
    if actual_f.is_floating_point() and torch.isnan(actual_f).all():
        return "it holds only NaN (never written?)"
    if not actual_f.any():
        return "it holds zeros"
    if actual.dim() == 2 and actual.shape[0] == actual.shape[1] and same_bits(actual.t(), expected):
        return "it holds the transpose"
    elsewhere = holds_instead(actual, tensors)
    if elsewhere:
        return elsewhere
    actual, expected = actual_f, expected_f
    diff = (actual != expected).nonzero()
    if not len(diff):
        return "the values compare equal but their bits differ (signed zeros or NaN payloads)"
    first = tuple(int(i) for i in diff[0])
    return (
        f"{len(diff)} of {expected.numel()} elements differ, first at {list(first)}: "
        f"got {actual[first].item():g}, expected {expected[first].item():g}"
    )


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (so -0.0 != 0.0 and NaN payloads count), which torch.equal is not."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == torch.bool or a.numel() == 0:
        return torch.equal(a, b)
    return torch.equal(_bytes(a), _bytes(b))


def _bytes(x: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, from a fresh dense copy: torch calls a one-element tensor with any
    stride contiguous, and a 0-d one cannot be viewed as bytes at all."""
    dense = torch.empty(x.numel(), dtype=x.dtype, device=x.device).copy_(x.reshape(-1))
    return dense.view(torch.uint8)


def param_mismatches(
    name: str,
    actual: torch.Tensor,
    exp: ExpectedParam,
    shapes: Mapping[str, tuple[int, ...]],
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> list[str]:
    actual = actual.detach()
    if actual.device.type != "cpu":
        actual = actual.cpu()
    if tuple(actual.shape) != tuple(exp.value.shape):
        pieces = "; ".join(
            f"{describe_region(p.dst, tuple(exp.value.shape))} = {p.label}" for p in exp.pieces
        )
        return [
            f"{name}: shape {list(actual.shape)}, expected {list(exp.value.shape)} "
            f"({pieces})"
        ]
    want_all = exp.held_as(actual.dtype)
    if actual.dtype != want_all.dtype:
        return [f"{name}: dtype {actual.dtype}, expected {exp.value.dtype} (the checkpoint's)"]
    if same_bits(actual, want_all):
        return []
    out = []
    shape = tuple(exp.value.shape)
    for piece in exp.pieces:
        got, want = actual[piece.dst], want_all[piece.dst]
        if same_bits(got, want):
            continue
        hint = _hint(got, want, tensors)
        out.append(
            f"{describe_region(piece.dst, shape)} of {name} ({piece.label}) should be "
            f"{describe_source(piece, shapes)}" + (f"; {hint}" if hint else "")
        )
    return out or [f"{name}: values differ outside every mapped region"]


def state_mismatches(
    state: Mapping[str, torch.Tensor],
    expected: Expected,
    shapes: Mapping[str, tuple[int, ...]],
    only: Iterable[str] | None = None,
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> list[str]:
    """Every difference between ``state`` and the oracle's, most telling first.

    ``tensors`` (the checkpoint's values) let a message say which other tensor a wrong region
    holds; searched only for the problems a report shows.
    """
    names = set(expected.params) if only is None else set(only)
    problems = []
    missing = sorted(names - set(state))
    if missing:
        problems.append(f"runtime parameters missing from state(): {missing}")
    if only is None:
        for name in sorted(set(state) - set(expected.params)):
            value = state[name].detach().cpu() if hasattr(state[name], "detach") else state[name]
            held = _what_it_holds(value, tensors) if hasattr(value, "dim") else None
            problems.append(
                f"{name} should not exist on this rank (a parameter of its own); "
                + (held or "it holds none of the checkpoint's tensors")
            )
    for name in sorted(names & set(state)):
        hinted = tensors if len(problems) < MAX_REPORTED else None
        problems += param_mismatches(name, state[name], expected.params[name], shapes, hinted)
    return problems


def fail(title: str, problems: list[str], context: str) -> NoReturn:
    __tracebackhide__ = True
    shown = problems if detailed() else problems[:MAX_REPORTED]
    more = len(problems) - len(shown)
    body = "\n".join(f"  - {p}" for p in shown)
    if more:
        body += f"\n  ... and {more} more (all of them with -vv)"
    raise PropertyFailure(f"{title}\n{body}\n{context}")
