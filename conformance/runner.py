"""One example of one property: how it is drawn, how it is run, how it is written down.

An ``Example`` is a case plus what the property drew beyond it (the dropped tensor, the second
layout, the second value seed).  Everything here is plain data, so a failing example becomes a
case file, and a case file (``--replay``, the regression corpus) runs again without Hypothesis.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import strategies as st

from weightcheck.fixtures.case import Case, CheckpointRecipe
from weightcheck.strategies import cases, relayouts
from weightcheck.strategies.archs import loras
from weightcheck.strategies.checkpoints import value_seeds

from . import properties
from weightcheck.capabilities import Capabilities, FEATURES

# The order of the conformance modules; a replay runs a case through them in this order.
from weightcheck.families import FAMILIES

from .protocol import LoaderAdapter

# The order of the conformance modules; a replay runs a case through them in this order.
PROPERTIES = (
    "roundtrip",
    "tracking",
    "missing_tensor",
    "check_loaded",
    "invariance",
    "checkpoint_unchanged",
    "reload",
    "lora_equivalence",
    "all_ranks",
)
FP8_FAMILIES = {f.name: f.fp8_methods for f in FAMILIES.values() if f.fp8_methods}
MAX_RANKS = 8  # all_ranks loads every rank: keep one example to a few dozen loads


@dataclass(frozen=True)
class Example:
    property: str
    case: Case
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"property": self.property, "case": self.case.to_dict(), "extras": self.extras}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Example":
        return cls(data["property"], Case.from_dict(data["case"]), dict(data.get("extras", {})))


def draw_example(
    data: st.DataObject, prop: str, family: str, caps: Capabilities, device: str = "cpu"
) -> Example:
    """Draw the case and the property's own extras, labelled so Hypothesis prints them."""
    max_ranks = MAX_RANKS if prop == "all_ranks" else None
    case = data.draw(cases(family, caps, max_ranks), label="case")
    if device != "cpu":
        case = replace(case, placement=replace(case.placement, device=device))
    extras: dict[str, Any] = {}
    if prop == "lora_equivalence" and case.arch.lora is None:
        lora = data.draw(loras(case.arch.family), label="lora")
        case = replace(case, arch=replace(case.arch, lora=lora))
    elif prop == "missing_tensor":
        needed = properties.needed_tensors(case)
        extras["dropped"] = data.draw(st.sampled_from(needed), label="dropped tensor")
    elif prop == "check_loaded":
        needed = properties.needed_tensors(case)
        dropped = st.none() | st.sampled_from(needed)
        extras["dropped"] = data.draw(dropped, label="dropped tensor (None: complete)")
    elif prop == "invariance":
        sharded = caps.supports("sharded_checkpoint")
        other = data.draw(relayouts(case.recipe, sharded=sharded), label="second layout")
        extras["second_layout"] = [list(f) for f in other.files]
    elif prop == "reload":
        seeds = value_seeds().filter(lambda s: s != case.recipe.value_seed)
        extras["second_seed"] = data.draw(seeds, label="second value seed")
    return Example(prop, case, extras)


def skip_reason(prop: str, family: str, caps: Capabilities) -> str | None:
    """Why ``prop`` x ``family`` is not judged for a loader with ``caps`` (None: it is)."""
    if family not in caps.families:
        return f"not supported by the loader: family {family}"
    if prop == "lora_equivalence":
        if not caps.supports("lora"):
            return "not supported by the loader: lora"
        if not FAMILIES[family].lora:
            return f"not applicable: {family} has no LoRA wrapping"
    return None


def not_applicable(prop: str, case: Case) -> str | None:
    """Why a property does not apply to a case (None if it does)."""
    if prop == "lora_equivalence" and case.arch.lora is None:
        return "the case has no LoRA wrapping"
    return None


def unsupported(case: Case, caps: Capabilities) -> list[str]:
    """What a case uses that the loader's capabilities exclude."""
    missing = [] if case.arch.family in caps.families else [f"family {case.arch.family}"]
    missing += [
        name
        for name, used in case.features().items()
        if isinstance(used, bool) and used and name in FEATURES and not caps.supports(name)
    ]
    return missing


def run_example(loader: LoaderAdapter, example: Example) -> str | None:
    """Run one example; raises ``PropertyFailure`` or ``NotSupported``.  Returns a note."""
    case, extras, prop = example.case, example.extras, example.property
    if prop == "missing_tensor":
        dropped = extras.get("dropped")
        for name in [dropped] if dropped else properties.needed_tensors(case):
            note = properties.missing_tensor(loader, case, name)
        return note
    if prop == "check_loaded":
        return properties.check_loaded(loader, case, extras.get("dropped"))
    if prop == "invariance":
        files = extras.get("second_layout") or [list(reversed(case.recipe.names))]
        other = CheckpointRecipe(case.recipe.value_seed, files, case.recipe.format)
        return properties.invariance(loader, case, other)
    if prop == "reload":
        return properties.reload(loader, case, extras.get("second_seed", case.recipe.value_seed + 1))
    return getattr(properties, prop)(loader, case)
