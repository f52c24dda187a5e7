"""A second load into a built model (weight sync)."""

from __future__ import annotations

from weightcheck.reference_models.reference_loader.loader import ReferenceLoader

from .base import Mutant


class LoadsEachParameterOnce(ReferenceLoader):
    """Parameters already initialised are skipped on a later load (an "is initialised" flag
    kept across loads, as transformers' ``_is_hf_initialized``), so weight sync is a no-op."""

    name = "mutant loads each parameter once"

    def load(self, model, checkpoint):
        done = getattr(model, "_weightcheck_loaded", None)
        if done is not None:
            return set(done)
        model._weightcheck_loaded = loaded = super().load(model, checkpoint)
        return loaded


MUTANTS = [
    Mutant(
        "loads_each_parameter_once",
        "a second load skips parameters already initialised (weight sync does nothing)",
        "transformers _is_hf_initialized / RL weight-sync reloads",
        "reload",
        ("llama", "qwen2_moe"),
        LoadsEachParameterOnce(),
        "reload",
    ),
]
