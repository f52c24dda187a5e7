"""What the conformance tests get from the ``weightcheck`` fixture: the loader, drawing and
running examples within its capabilities, counts of what was exercised, and the last example
(written to a case file when the test fails)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import currently_in_test_context, event
from hypothesis import strategies as st

from weightcheck.fixtures.case import Case

from .properties import NotSupported, property_named
from .protocol import LoaderAdapter
from .runner import Example, draw_example, run_example, unsupported
from .session import EXERCISED
from .timing import Clock, measuring


@dataclass
class Harness:
    """``clock``: when given, every example's time is split into the sections of
    ``conformance.timing`` (the benchmark's public hook; nothing is measured otherwise)."""

    loader: LoaderAdapter
    clock: Clock | None = None
    counts: dict[str, Counter] = field(default_factory=dict)
    last_example: dict[str, Example] = field(default_factory=dict)
    current: str = ""

    def check(self, prop: str, data: st.DataObject, family: str, device: str = "cpu") -> None:
        """Draw one example of ``prop`` for ``family`` and run it against the loader."""
        reason = property_named(prop).skip_reason(family, self.loader)
        if reason:
            pytest.skip(reason)
        with measuring(self.clock):
            example = draw_example(data, prop, family, self.loader.capabilities, device)
            self.record(example.case)
            self.last_example[self.current] = example
            self.run(example)

    def check_device(
        self, check, data: st.DataObject, family: str, methods: tuple[str, ...], device: str = "cuda"
    ) -> None:
        """Draw an FP8 case on ``device`` and run one of ``device_checks`` on it."""
        from weightcheck.strategies.cases import fp8_cases

        caps = self.loader.capabilities
        supported = tuple(m for m in methods if caps.supports(m))
        reason = property_named("roundtrip").skip_reason(family, self.loader)
        if reason is None and device.startswith("cuda") and not caps.supports("cuda"):
            reason = "not supported by the loader: cuda"
        if reason is None and not supported:
            reason = f"not supported by the loader: {', '.join(methods)}"
        if reason:
            pytest.skip(reason)
        with measuring(self.clock):
            case = data.draw(fp8_cases(family, caps, supported), label="case")
            case = replace(case, placement=replace(case.placement, device=device))
            self.record(case)
            self.last_example[self.current] = Example(check.__name__, case)
            try:
                check(self.loader, case)
            except NotSupported as why:
                pytest.skip(f"not supported by the loader: {why}")
            self.counts[self.current][EXERCISED] += 1

    def replay(self, path, prop: str) -> None:
        """Run one property on the case of a case file (its own draws if it is that property's)."""
        from .casefiles import read_case_file

        example, _ = read_case_file(path)
        missing = unsupported(example.case, self.loader.capabilities)
        if missing:
            pytest.skip(f"not supported by the loader: {', '.join(missing)}")
        prop_obj = property_named(prop)
        reason = prop_obj.skip_reason(example.case.arch.family, self.loader)
        if reason is None and prop_obj.not_applicable(example.case):
            reason = f"not applicable: {prop_obj.not_applicable(example.case)}"
        if reason:
            pytest.skip(reason)
        extras = example.extras if example.property == prop else {}
        self.record(example.case)
        self.run(Example(prop, example.case, extras))

    def run(self, example: Example) -> None:
        try:
            outcome = run_example(self.loader, example)
        except NotSupported as why:
            pytest.skip(f"not supported by the loader: {why}")
        if outcome.exercised:
            self.counts[self.current][EXERCISED] += 1
        if outcome.note and currently_in_test_context():
            event(f"{example.property}: {outcome.note}")

    def record(self, case: Case) -> None:
        """Count the example's features (and tell Hypothesis's statistics, inside a test)."""
        counter = self.counts.setdefault(self.current, Counter())
        counter["examples"] += 1
        in_hypothesis = currently_in_test_context()
        for key, value in case.features().items():
            if isinstance(value, bool):
                counter[key] += value
                text = "yes" if value else "no"
            else:
                counter[f"{key}={value}"] += 1
                text = value
            if in_hypothesis:
                event(f"{key}: {text}")
