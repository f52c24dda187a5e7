"""What the conformance tests get from the ``weightcheck`` fixture: the loader, case drawing
within its capabilities, and counts of what the drawn examples exercised."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hypothesis import event
from hypothesis import strategies as st

from fixtures.case import Case
from strategies import cases, relayouts

from .protocol import LoaderAdapter


@dataclass
class Harness:
    loader: LoaderAdapter
    counts: dict[str, Counter] = field(default_factory=dict)
    current: str = ""

    def draw_case(self, data: st.DataObject, family: str) -> Case:
        case = data.draw(cases(family, self.loader.capabilities), label="case")
        self.record(case)
        return case

    def draw_relayout(self, data: st.DataObject, case: Case):
        sharded = self.loader.capabilities.supports("sharded_checkpoint")
        return data.draw(relayouts(case.recipe, sharded=sharded), label="second layout")

    def record(self, case: Case) -> None:
        counter = self.counts.setdefault(self.current, Counter())
        counter["examples"] += 1
        for key, value in case.features().items():
            if isinstance(value, bool):
                event(f"{key}: {'yes' if value else 'no'}")
                counter[key] += value
            else:
                event(f"{key}: {value}")
                counter[f"{key}={value}"] += 1
