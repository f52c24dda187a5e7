"""What the conformance tests get from the ``weightcheck`` fixture: the loader, case drawing
within its capabilities, and counts of what the drawn examples exercised."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import pytest

from hypothesis import event
from hypothesis import strategies as st

from fixtures.case import Case
from strategies import cases, relayouts
from strategies.archs import loras

from .protocol import LoaderAdapter


LORA_FAMILIES = ("llama", "qwen3_moe", "qwen2_moe")


@dataclass
class Harness:
    loader: LoaderAdapter
    counts: dict[str, Counter] = field(default_factory=dict)
    current: str = ""

    def draw_case(self, data: st.DataObject, family: str, max_ranks: int | None = None) -> Case:
        case = data.draw(cases(family, self.loader.capabilities, max_ranks), label="case")
        self.record(case)
        return case

    def draw_lora_case(self, data: st.DataObject, family: str) -> Case:
        """A case with LoRA wrapping, whatever the first draw chose."""
        case = data.draw(cases(family, self.loader.capabilities), label="case")
        if case.arch.lora is None:
            lora = data.draw(loras(moe=case.arch.moe is not None), label="lora")
            case = replace(case, arch=replace(case.arch, lora=lora))
        self.record(case)
        return case

    def require(self, family: str, feature: str) -> None:
        """Skip (as not supported) a test of ``feature`` the loader or family does not have."""
        if not self.loader.capabilities.supports(feature):
            pytest.skip(f"not supported by the loader: {feature}")
        if feature == "lora" and family not in LORA_FAMILIES:
            pytest.skip(f"not applicable: {family} has no LoRA wrapping")

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
