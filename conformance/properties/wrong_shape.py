"""A tensor of the wrong shape is refused, never narrowed, padded, reshaped or broadcast.

One tensor this rank needs is stored with one dimension one longer or one shorter, or with one
rank more (a leading 1) or less (flattened).  The loader raises naming it or a parameter that
needs it, and loads the well-formed checkpoint: a loader that narrows a long tensor to its rank's
slice, pads a short one or reshapes it to fit loads data that is not the checkpoint's.
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

from weightcheck.fixtures.adversarial import seeded_tensor, write_files
from weightcheck.reference_models.families.rules import Sharded
from weightcheck.reference_models.oracle.expected import checkpoint_shapes, expected_layout

from ..assertions import fail
from .base import (
    LoaderRaised,
    Property,
    context,
    expected,
    judge_refusal,
    load_written,
    needed_tensors,
    tensors_of,
)


def reshapes(shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
    """Every wrong shape of one step from ``shape``: a dimension +-1, a rank +-1."""
    out = []
    for axis, size in enumerate(shape):
        grown = list(shape)
        grown[axis] += 1
        out.append((f"dimension {axis} one longer", tuple(grown)))
        if size > 1:
            shrunk = list(shape)
            shrunk[axis] -= 1
            out.append((f"dimension {axis} one shorter", tuple(shrunk)))
    out.append(("a leading dimension of 1 added", (1, *shape)))
    if len(shape) >= 2:
        out.append(("flattened", (math.prod(shape),)))
    return out


class WrongShape(Property):
    name = "wrong_shape"
    label = "wrong shape"
    inputs = ("wrong shape: a dimension +-1", "wrong shape: a rank +-1")

    def input_of(self, extras):
        how = extras.get("how", "")
        return None if not how else self.inputs[0] if "dimension" in how and "leading" not in how else self.inputs[1]

    @staticmethod
    def _targets(case) -> list[str]:
        # per-tensor FP8 scales come as [] or [1] in real checkpoints alike: not a wrong shape
        tensors = tensors_of(case)
        return [n for n in needed_tensors(case) if tensors[n].dim() > 0]

    @staticmethod
    def _by_kind(case, targets: list[str]) -> dict[str, list[str]]:
        """``targets`` grouped by the layout rule of the first runtime parameter that reads
        them (replicated, column- or row-parallel, vocab-parallel, stacked, experts, scales):
        each is one weight-loader code path, and a path with two tensors (GPT-2's ``c_fc``)
        must be drawn as often as one with twenty (the norms)."""
        arch, placement, fmt = case.arch, case.placement, case.recipe.format
        shapes = checkpoint_shapes(arch, fmt)
        kind_of: dict[str, str] = {}
        for _, rule in sorted(expected_layout(arch, placement, fmt).items()):
            inner = getattr(rule, "rule", rule)  # InDtype wraps the rule of an FP8 weight or scale
            kind = type(inner).__name__ + (f" dim {inner.dim}" if isinstance(inner, Sharded) else "")
            for piece in rule.pieces(arch, placement, shapes)[1]:
                for n in piece.source.names if piece.source is not None else ():
                    kind_of.setdefault(n, kind)
        groups: dict[str, list[str]] = {}
        for name in targets:
            groups.setdefault(kind_of.get(name, "other"), []).append(name)
        return groups

    def draw(self, data, case, caps):
        tensors = tensors_of(case)
        groups = self._by_kind(case, self._targets(case))
        kind = data.draw(st.sampled_from(sorted(groups)), label="layout rule of the tensor")
        name = data.draw(st.sampled_from(groups[kind]), label="tensor of the wrong shape")
        how, shape = data.draw(st.sampled_from(reshapes(tuple(tensors[name].shape))), label="wrong shape")
        return case, {"name": name, "how": how, "shape": list(shape)}

    def replay_extras(self, case):
        tensors = tensors_of(case)
        name = self._targets(case)[0]
        return [{"name": name, "how": how, "shape": list(shape)} for how, shape in reshapes(tuple(tensors[name].shape))[:2]]

    def run(self, loader, case, extras):
        name, how, shape = extras["name"], extras["how"], tuple(extras["shape"])
        tensors = tensors_of(case)
        dtype = str(tensors[name].dtype).removeprefix("torch.")
        bad = {**tensors, name: seeded_tensor(name, shape, dtype, case.recipe.value_seed)}
        headline = f"wrong shape: {name} stored as {list(shape)} ({how}; the layout needs {list(tensors[name].shape)})"
        where = context(case, f"wrong shape: {name} {list(shape)}, {how}")
        try:
            load_written(loader, case, lambda path: write_files(case, path, case.recipe.files, bad), tensors)
        except LoaderRaised as err:
            return judge_refusal(loader, case, tensors, name, err, headline, where)
        dependents = sorted(expected(case, tensors, loader).dependents(name))
        fail(
            f"{headline}: accepted without an error",
            [f"load() returned normally; {dependents} now hold data the checkpoint does not have in that place"],
            where,
        )
