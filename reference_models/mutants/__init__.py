"""Deliberately buggy loaders ("mutants"), each reproducing one realistic loading bug.

Every property of the suite must fail against at least one of these; the reference loader
they are derived from must pass everything.  Each mutant changes one decision of the
reference loader, the way the real bug did, and names where that bug was seen.  One module per
concern; ``MUTANTS`` lists them all, in a stable order, and ``BY_NAME`` finds one.
"""

from __future__ import annotations

from . import (
    checkpoint_files,
    config,
    duplicates,
    files,
    fp8,
    gpt2,
    lora,
    moe,
    order,
    pipeline,
    reload,
    shapes,
    streams,
    tensor_parallel,
    tracking,
    unexpected,
)
from .base import Mutant, MutantLoader

MUTANTS: list[Mutant] = [
    *gpt2.MUTANTS,
    *tensor_parallel.MUTANTS,
    *order.MUTANTS,
    *tracking.MUTANTS,
    *checkpoint_files.MUTANTS,
    *moe.MUTANTS,
    *lora.MUTANTS,
    *pipeline.MUTANTS,
    *reload.MUTANTS,
    *fp8.MUTANTS,
    *unexpected.MUTANTS,
    *duplicates.MUTANTS,
    *shapes.MUTANTS,
    *files.MUTANTS,
    *streams.MUTANTS,
    *config.MUTANTS,
]
BY_NAME = {m.name: m for m in MUTANTS}
if len(BY_NAME) != len(MUTANTS):
    raise ValueError("two mutants share a name")

# Mutant loaders by name, for --loader=weightcheck.reference_models.mutants:conv1d_loader (tests).
conv1d_loader = BY_NAME["conv1d_not_transposed"].loader

__all__ = ["BY_NAME", "MUTANTS", "Mutant", "MutantLoader", "conv1d_loader"]
