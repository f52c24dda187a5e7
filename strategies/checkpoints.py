"""Checkpoint recipes: which optional tensors are present, key order, and the split into files."""

from __future__ import annotations

import random

from hypothesis import strategies as st

from weightcheck.fixtures.case import CheckpointRecipe
from weightcheck.arch import Arch
from weightcheck.reference_models.families import checkpoint_specs, family_spec


def value_seeds() -> st.SearchStrategy[int]:
    return st.integers(0, 2**32 - 1)


@st.composite
def checkpoint_names(draw, arch: Arch, fmt: str = "default") -> list[str]:
    """Required weights, plus (drawn) the skippable buffers and a redundant tied lm_head."""
    specs = checkpoint_specs(arch, fmt)
    names = [n for n, s in specs.items() if s.role == "weight"]
    buffers = [n for n, s in specs.items() if s.role == "buffer"]
    if buffers and draw(st.booleans()):
        names += buffers
    aliases = [n for n, s in specs.items() if s.role == "alias"]
    if aliases and draw(st.booleans()):
        names += aliases
    return names


@st.composite
def layouts(draw, names: list[str], max_files: int = 4) -> tuple[tuple[str, ...], ...]:
    """A key order and an assignment of names to 1..max_files files (no file empty).

    Order and assignment come from one drawn seed, not one draw per tensor: a checkpoint has
    up to a few hundred tensors and per-tensor choices dominated the harness's time.  Shrinking
    goes to name-sorted order in one file.
    """
    names = sorted(names)
    n_files = draw(st.integers(1, max(1, min(max_files, len(names)))))
    if not draw(st.booleans()):  # shuffled?
        order = names
        owner = [k * n_files // len(names) for k in range(len(names))]
    else:
        rng = random.Random(draw(st.integers(0, 2**32 - 1)))
        order = names[:]
        rng.shuffle(order)
        # the first n_files names seed one file each, the rest go anywhere
        owner = list(range(n_files)) + [rng.randrange(n_files) for _ in order[n_files:]]
    return tuple(tuple(n for n, o in zip(order, owner) if o == k) for k in range(n_files))


def formats(arch: Arch, fused_experts: bool = True) -> st.SearchStrategy[str]:
    """The family's checkpoint formats; ``fused_experts`` False keeps per-expert names only."""
    options = [f for f in family_spec(arch.family).formats(arch) if fused_experts or f != "fused_experts"]
    return st.sampled_from(options)


@st.composite
def checkpoint_recipes(
    draw, arch: Arch, sharded: bool = True, fused_experts: bool = True
) -> CheckpointRecipe:
    fmt = draw(formats(arch, fused_experts))
    names = draw(checkpoint_names(arch, fmt))
    files = draw(layouts(names, max_files=4 if sharded else 1))
    return CheckpointRecipe(value_seed=draw(value_seeds()), files=files, format=fmt)


@st.composite
def relayouts(draw, recipe: CheckpointRecipe, sharded: bool = True) -> CheckpointRecipe:
    """The same tensors and values in another order and split."""
    files = draw(layouts(list(recipe.names), max_files=4 if sharded else 1))
    return CheckpointRecipe(value_seed=recipe.value_seed, files=files, format=recipe.format)
