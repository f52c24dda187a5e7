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

from .properties import NotSupported
from .protocol import LoaderAdapter
from .runner import Example, draw_example, run_example, skip_reason


@dataclass
class Harness:
    loader: LoaderAdapter
    counts: dict[str, Counter] = field(default_factory=dict)
    last_example: dict[str, Example] = field(default_factory=dict)
    current: str = ""

    def check(self, prop: str, data: st.DataObject, family: str, device: str = "cpu") -> None:
        """Draw one example of ``prop`` for ``family`` and run it against the loader."""
        reason = skip_reason(prop, family, self.loader.capabilities)
        if reason:
            pytest.skip(reason)
        example = draw_example(data, prop, family, self.loader.capabilities, device)
        self.record(example.case)
        self.last_example[self.current] = example
        try:
            note = run_example(self.loader, example)
        except NotSupported as reason:
            pytest.skip(f"not supported by the loader: {reason}")
        if note:
            event(f"{prop}: {note}")

    def check_device(
        self, check, data: st.DataObject, family: str, methods: tuple[str, ...], device: str = "cuda"
    ) -> None:
        """Draw an FP8 case on ``device`` and run one of ``device_checks`` on it."""
        from weightcheck.strategies.cases import fp8_cases

        caps = self.loader.capabilities
        supported = tuple(m for m in methods if caps.supports(m))
        reason = skip_reason("roundtrip", family, caps)
        if reason is None and device.startswith("cuda") and not caps.supports("cuda"):
            reason = "not supported by the loader: cuda"
        if reason is None and not supported:
            reason = f"not supported by the loader: {', '.join(methods)}"
        if reason:
            pytest.skip(reason)
        case = data.draw(fp8_cases(family, caps, supported), label="case")
        case = replace(case, placement=replace(case.placement, device=device))
        self.record(case)
        self.last_example[self.current] = Example(check.__name__, case)
        try:
            check(self.loader, case)
        except NotSupported as why:
            pytest.skip(f"not supported by the loader: {why}")

    def replay(self, path, prop: str) -> None:
        """Run one property on the case of a case file (its own draws if it is that property's)."""
        from .casefiles import read_case_file
        from .runner import not_applicable, unsupported

        example, _ = read_case_file(path)
        missing = unsupported(example.case, self.loader.capabilities)
        if missing:
            pytest.skip(f"not supported by the loader: {', '.join(missing)}")
        reason = not_applicable(prop, example.case)
        if reason:
            pytest.skip(f"not applicable: {reason}")
        extras = example.extras if example.property == prop else {}
        self.record(example.case)
        try:
            run_example(self.loader, Example(prop, example.case, extras))
        except NotSupported as why:
            pytest.skip(f"not supported by the loader: {why}")

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
