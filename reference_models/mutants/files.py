"""Loaders that read the wrong files, or read past damage, of a checkpoint directory."""

from __future__ import annotations

from pathlib import Path

from weightcheck.reference_models.reference_loader.loader import ReferenceLoader
from weightcheck.reference_models.reference_loader.tracking import load_session

from .base import Mutant


class GlobsSafetensors(ReferenceLoader):
    """vLLM's fallback without an index, used always: every ``*.safetensors`` in the directory
    is read, so a stale shard from an earlier save is loaded with the real ones."""

    name = "mutant globs *.safetensors"

    def load(self, model, checkpoint):
        loaded = set()
        with load_session(model):
            for file in sorted(Path(checkpoint.path).glob("*.safetensors")):
                loaded |= set(model.load_weights(checkpoint.file_weights(file)))
        return loaded


class SkipsUnreadableFiles(ReferenceLoader):
    """A best-effort loader: a file that fails to read is skipped with a log line, and the load
    goes on with the others."""

    name = "mutant skips unreadable files"

    def load(self, model, checkpoint):
        loaded = set()
        with load_session(model):
            for file in checkpoint.files():
                try:
                    loaded |= set(model.load_weights(list(checkpoint.file_weights(file))))
                except (OSError, ValueError):
                    continue
        return loaded


MUTANTS = [
    Mutant(
        "safetensors_globbed",
        "every *.safetensors file of the directory is read, not the ones the index names",
        "vLLM DefaultModelLoader without an index (glob *.safetensors); stale shards from re-saves",
        "damaged_checkpoint",
        ("llama",),
        GlobsSafetensors(),
        "the index",  # a stale shard it does not name is read, a shard it names is not missed
    ),
    Mutant(
        "unreadable_files_skipped",
        "a damaged or missing shard is skipped and the rest loaded",
        "best-effort loaders that log and continue",
        "damaged_checkpoint",
        ("llama",),
        SkipsUnreadableFiles(),
        "loaded without an error",
    ),
]
