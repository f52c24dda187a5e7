"""Checkpoint recipes: which optional tensors are present, key order, and the split into files."""

from __future__ import annotations

from hypothesis import strategies as st

from fixtures.case import CheckpointRecipe
from reference_models.arch import Arch
from reference_models.families import family_spec


def value_seeds() -> st.SearchStrategy[int]:
    return st.integers(0, 2**32 - 1)


@st.composite
def checkpoint_names(draw, arch: Arch, fmt: str = "default") -> list[str]:
    """Required weights, plus (drawn) the skippable buffers and a redundant tied lm_head."""
    specs = family_spec(arch.family).checkpoint(arch, fmt)
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
    """A random order, and a random (not contiguous) assignment of names to 1..max_files files."""
    order = draw(st.permutations(sorted(names)))
    n_files = draw(st.integers(1, max(1, min(max_files, len(order)))))
    rest = len(order) - n_files  # the first n_files names seed one file each: none is empty
    owner = list(range(n_files)) + draw(
        st.lists(st.integers(0, n_files - 1), min_size=rest, max_size=rest)
    )
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
