"""The conformance properties, in the order the suite runs them (a replay runs a case through
them in this order).  Each is one module here and one test module ``conformance/test_*.py``."""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from .all_ranks import AllRanks
from .base import LoaderRaised, NotSupported, Outcome, Property, needed_tensors
from .check_loaded import CheckLoaded
from .checkpoint_unchanged import CheckpointUnchanged
from .damaged_checkpoint import DamagedCheckpoint
from .duplicate_tensor import DuplicateTensor
from .foreign_dtype import ForeignDtype
from .hostile_stream import HostileStream
from .invariance import Invariance
from .lora_equivalence import LoraEquivalence
from .missing_tensor import MissingTensor
from .reload import Reload
from .reload_processed import ReloadAfterProcessing
from .roundtrip import Roundtrip
from .tracking import Tracking
from .unexpected_tensor import UnexpectedTensor
from .wrong_shape import WrongShape

PROPERTIES: Mapping[str, Property] = MappingProxyType(
    {
        p.name: p
        for p in (
            Roundtrip(),
            Tracking(),
            MissingTensor(),
            CheckLoaded(),
            Invariance(),
            CheckpointUnchanged(),
            Reload(),
            LoraEquivalence(),
            AllRanks(),
            UnexpectedTensor(),
            DuplicateTensor(),
            WrongShape(),
            ForeignDtype(),
            DamagedCheckpoint(),
            HostileStream(),
            ReloadAfterProcessing(),
        )
    }
)
PROPERTY_NAMES: tuple[str, ...] = tuple(PROPERTIES)


def property_named(name: str) -> Property:
    try:
        return PROPERTIES[name]
    except KeyError:
        raise ValueError(f"unknown property {name!r}; known: {list(PROPERTY_NAMES)}") from None


__all__ = [
    "PROPERTIES",
    "PROPERTY_NAMES",
    "LoaderRaised",
    "NotSupported",
    "Outcome",
    "Property",
    "needed_tensors",
    "property_named",
]
