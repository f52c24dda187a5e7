"""Comparing a loader's state with the oracle, and saying precisely what is wrong.

Comparisons are bit-exact (``torch.equal`` on the values; the checkpoint and runtime dtypes are
the same, so there is no rounding anywhere).  A failure names the runtime parameter, the region
(rows, columns, shard, tp rank) and the checkpoint tensor and slice that belongs there.
"""

from __future__ import annotations

from typing import Iterable, Mapping, NoReturn

import torch

from weightcheck.reference_models.oracle import Expected, ExpectedParam, Piece

MAX_REPORTED = 8


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


def _hint(actual: torch.Tensor, expected: torch.Tensor) -> str:
    """A guess at what went wrong, from what the region holds instead."""
    if expected.dtype == torch.float8_e4m3fn:  # few ops exist for FP8: compare its values
        actual, expected = actual.float(), expected.float()
    if actual.is_floating_point() and torch.isnan(actual).all():
        return "it holds only NaN (never written?)"
    if not actual.any():
        return "it holds zeros"
    if actual.dim() == 2 and actual.shape[0] == actual.shape[1] and same_bits(actual.t(), expected):
        return "it holds the transpose"
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
    name: str, actual: torch.Tensor, exp: ExpectedParam, shapes: Mapping[str, tuple[int, ...]]
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
    if actual.dtype != exp.value.dtype:
        return [f"{name}: dtype {actual.dtype}, expected {exp.value.dtype} (the checkpoint's)"]
    if same_bits(actual, exp.value):
        return []
    out = []
    shape = tuple(exp.value.shape)
    for piece in exp.pieces:
        got, want = actual[piece.dst], exp.value[piece.dst]
        if same_bits(got, want):
            continue
        hint = _hint(got, want)
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
) -> list[str]:
    names = set(expected.params) if only is None else set(only)
    problems = []
    missing = sorted(names - set(state))
    if missing:
        problems.append(f"runtime parameters missing from state(): {missing}")
    if only is None:
        extra = sorted(set(state) - set(expected.params))
        if extra:
            problems.append(f"runtime parameters that should not exist on this rank: {extra}")
    for name in sorted(names & set(state)):
        problems += param_mismatches(name, state[name], expected.params[name], shapes)
    return problems


def fail(title: str, problems: list[str], context: str) -> NoReturn:
    shown = problems[:MAX_REPORTED]
    more = len(problems) - len(shown)
    body = "\n".join(f"  - {p}" for p in shown)
    if more:
        body += f"\n  ... and {more} more"
    raise PropertyFailure(f"{title}\n{body}\n{context}")
