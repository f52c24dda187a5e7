"""The same tensor twice, or an index that lies, loaded without a word."""

from __future__ import annotations

from weightcheck.reference_models.reference_loader.loader import ReferenceLoader
from weightcheck.reference_models.reference_loader.tracking import LoadTracker, load_session

from .base import Mutant


class LastCopyWinsTracker(LoadTracker):
    """vLLM's ``loaded_params.add(name)``: a set, so a second load of a parameter is not
    noticed; whichever copy comes last stays in the model."""

    def record(self, name, shard_id=None):
        param = self._params[name]
        shards = self._loaded.setdefault(self._canonical[id(param)], set())
        shards.update((param.shard_ids or (None,)) if shard_id is None else (shard_id,))


class AliasesOverwrite(ReferenceLoader):
    name = "mutant aliases overwrite"

    def load(self, model, checkpoint):
        loaded = set()
        with load_session(model, LastCopyWinsTracker):
            for group in checkpoint.weight_groups():
                loaded |= set(model.load_weights(group))
        return loaded


class IndexNotValidated(ReferenceLoader):
    """vLLM's DefaultModelLoader: the index only selects which files to read; every tensor of
    those files is streamed, and where the index says a key lives is never compared."""

    name = "mutant index not validated"

    def load(self, model, checkpoint):
        loaded = set()
        with load_session(model):
            for group in checkpoint.weight_groups():
                loaded |= set(model.load_weights(group))
        return loaded


class CollapsesIntoDict(ReferenceLoader):
    """``weights = dict(weights_iterator)`` before loading: a key stored in two shards collapses
    into the last copy read, and the index is not consulted."""

    name = "mutant collapses duplicates into a dict"

    def load(self, model, checkpoint):
        with load_session(model):
            return set(model.load_weights(dict(checkpoint.weights()).items()))


MUTANTS = [
    Mutant(
        "aliases_overwrite",
        "a parameter loaded twice (two names, or two expert forms) keeps the last copy silently",
        "vLLM load_weights: loaded_params is a set, repeats are not noticed",
        "duplicate_tensor",
        ("gpt2", "qwen3_moe"),
        AliasesOverwrite(),
        "loaded without a word",
    ),
    Mutant(
        "index_not_validated",
        "the index only selects files; a key it maps to the wrong file is loaded from where it is",
        "vLLM DefaultModelLoader (filter_duplicate_safetensors_files keeps the index's files)",
        "duplicate_tensor",
        ("llama",),
        IndexNotValidated(),
        "the index maps a key to a file that does not hold it",
    ),
    Mutant(
        "duplicates_collapse_into_dict",
        "a key stored in two shards collapses into the last copy read",
        "loaders that build dict(weights_iterator) first",
        "duplicate_tensor",
        ("llama",),
        CollapsesIntoDict(),
        "one key stored in two shards",
    ),
]
