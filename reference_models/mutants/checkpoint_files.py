"""Loaders that touch the checkpoint directory."""

from __future__ import annotations

from weightcheck.reference_models.reference_loader.loader import ReferenceLoader

from .base import Mutant


class WritesCacheLoader(ReferenceLoader):
    """Leaves a converted-weights cache next to the checkpoint it read."""

    name = "mutant writes into the checkpoint"

    def load(self, model, checkpoint):
        loaded = super().load(model, checkpoint)
        (checkpoint.path / "converted.cache").write_bytes(b"cache")
        return loaded


MUTANTS = [
    Mutant(
        "writes_into_checkpoint",
        "the loader leaves a cache file in the checkpoint directory",
        "loaders that cache converted weights next to the checkpoint",
        "checkpoint_unchanged",
        ("llama", "gpt2"),
        WritesCacheLoader(),
        "converted.cache: added",
    ),
]
