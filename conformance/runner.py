"""One example of one property: how it is drawn, how it is run, how it is written down.

An ``Example`` is a case plus what the property drew beyond it (the dropped tensor, the second
layout, the second value seed).  Everything here is plain data, so a failing example becomes a
case file, and a case file (``--replay``, the regression corpus) runs again without Hypothesis.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import strategies as st

from weightcheck.capabilities import FEATURES, Capabilities
from weightcheck.fixtures.case import Case
from weightcheck.strategies import cases

from .properties import Outcome, property_named
from .protocol import LoaderAdapter
from .timing import section


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
    prop_obj = property_named(prop)
    with section("draw"):
        case = data.draw(cases(family, caps, prop_obj.max_ranks), label="case")
        if device != "cpu":
            case = replace(case, placement=replace(case.placement, device=device))
        case, extras = prop_obj.draw(data, case, caps)
    return Example(prop, case, extras)


class _Drawer:
    """A ``st.DataObject``-like wrapper of a composite strategy's ``draw``."""

    def __init__(self, draw) -> None:
        self._draw = draw

    def draw(self, strategy, label=None):
        return self._draw(strategy)


@st.composite
def examples(draw, prop: str, family: str, caps: Capabilities | None = None, device: str = "cpu") -> Example:
    """The examples of ``prop`` for ``family``, drawn exactly as the tests draw them, as a
    strategy (for reachability checks: ``hypothesis.find(examples(...), predicate)``)."""
    return draw_example(_Drawer(draw), prop, family, caps or Capabilities(), device)


def unsupported(case: Case, caps: Capabilities) -> list[str]:
    """What a case uses that the loader's capabilities exclude."""
    missing = [] if case.arch.family in caps.families else [f"family {case.arch.family}"]
    missing += [
        name
        for name, used in case.features().items()
        if isinstance(used, bool) and used and name in FEATURES and not caps.supports(name)
    ]
    reason = caps.placement_reason(case.placement, case.arch)
    if reason:
        missing.append(f"placement ({reason})")
    return missing


def run_example(loader: LoaderAdapter, example: Example) -> Outcome:
    """Run one example; raises ``PropertyFailure`` or ``NotSupported``."""
    outcome = property_named(example.property).run(loader, example.case, example.extras)
    return outcome if isinstance(outcome, Outcome) else Outcome(outcome or "")
