"""Which runtime parameters a ``load_weights`` call fully initialised.

Stricter than vLLM, whose tracker adds a fused parameter's name as soon as any one of its
shards is written: here ``qkv_proj`` counts only once q, k and v have all arrived, so a
checkpoint missing ``k_proj`` is reported instead of leaving NaN rows behind a "loaded" name.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Hashable, Iterator

from torch import nn

# Where ``load_session`` keeps the tracker of the load in progress on the model object.
SESSION_ATTR = "_reference_load_tracker"


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
        """Note a load into ``name``; ``shard_id=None`` means the whole parameter at once.

        A piece loaded twice in one load (the same tensor under two names, per-expert and fused
        forms of one expert, one key in two files) is an error: which copy is right is not ours
        to guess."""
        param = self._params[name]
        shards = self._loaded.setdefault(self._canonical[id(param)], set())
        required = param.shard_ids or (None,)
        arriving = set(required if shard_id is None else (shard_id,))
        twice = arriving & shards
        if twice:
            what = "" if twice == {None} else f" (shard {sorted(map(str, twice))[0]})"
            raise ValueError(f"{name}{what} is loaded a second time: the checkpoint holds it twice")
        shards.update(arriving)

    def loaded(self) -> set[str]:
        complete = set()
        for name, shards in self._loaded.items():
            param = self._params[name]
            if shards >= set(param.shard_ids or (None,)):
                complete.add(name)
        return complete


def tracker_for(model: nn.Module) -> LoadTracker:
    """The tracker of the load in progress on ``model``, or a fresh one for a bare call."""
    tracker = model.__dict__.get(SESSION_ATTR)
    return tracker if tracker is not None else LoadTracker(model)


@contextmanager
def load_session(model: nn.Module, tracker_class: type[LoadTracker] = LoadTracker) -> Iterator[LoadTracker]:
    """One load made of several ``load_weights`` calls (one per checkpoint file): they share one
    shard record, so a fused parameter whose shards sit in different files is still complete.

    State a model keeps between calls (``reset_pending``: halves waiting for their partner, such
    as an FP8 weight whose scale is in a later file) starts empty and is dropped at the end: a
    half that never met its partner loaded nothing and is never reported.
    """
    reset = getattr(model, "reset_pending", None)
    if reset is not None:
        reset()
    tracker = tracker_class(model)
    model.__dict__[SESSION_ATTR] = tracker
    try:
        yield tracker
    finally:
        del model.__dict__[SESSION_ATTR]
        if reset is not None:
            reset()


@contextmanager
def naming(checkpoint_name: str) -> Iterator[None]:
    """An error while loading one checkpoint tensor names that tensor: "fused qkv: shape
    (2, 6), expected (6, 2)" says what is wrong, not where."""
    try:
        yield
    except Exception as exc:
        if checkpoint_name in str(exc):
            raise
        kind = "" if isinstance(exc, ValueError) else f"{type(exc).__name__}: "
        raise ValueError(f"checkpoint tensor {checkpoint_name!r}: {kind}{exc}") from exc
