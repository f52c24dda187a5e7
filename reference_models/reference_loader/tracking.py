"""Which runtime parameters a ``load_weights`` call fully initialised.

Stricter than vLLM, whose tracker adds a fused parameter's name as soon as any one of its
shards is written: here ``qkv_proj`` counts only once q, k and v have all arrived, so a
checkpoint missing ``k_proj`` is reported instead of leaving NaN rows behind a "loaded" name.
"""

from __future__ import annotations

from typing import Hashable

from torch import nn


class LoadTracker:
    """Resolves names to parameters and records which shards of each have been loaded.

    Lookup sees aliases (a tied ``lm_head.weight`` reaches the embedding, as in vLLM), but records
    and reports the canonical name ``named_parameters()`` gives, so the returned set only ever
    holds names the suite will find in the model's state.
    """

    def __init__(self, model: nn.Module) -> None:
        self._params = dict(model.named_parameters(remove_duplicate=False))
        self._canonical = {id(p): name for name, p in model.named_parameters()}
        self._loaded: dict[str, set[Hashable]] = {}

    def param(self, name: str, source: str | None = None) -> nn.Parameter:
        """The parameter (or alias) ``name``; ``source`` is the checkpoint name it came from."""
        try:
            return self._params[name]
        except KeyError:
            what = repr(name) if source in (None, name) else f"{source!r} (as {name!r})"
            raise ValueError(
                f"checkpoint tensor {what} matches no parameter of this model"
            ) from None

    def record(self, name: str, shard_id: Hashable | None = None) -> None:
        """Note a load into ``name``; ``shard_id=None`` means the whole parameter at once."""
        param = self._params[name]
        shards = self._loaded.setdefault(self._canonical[id(param)], set())
        required = param.shard_ids or (None,)
        shards.update(required if shard_id is None else (shard_id,))

    def loaded(self) -> set[str]:
        complete = set()
        for name, shards in self._loaded.items():
            param = self._params[name]
            if shards >= set(param.shard_ids or (None,)):
                complete.add(name)
        return complete
