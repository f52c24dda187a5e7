"""What the conformance tests get from the ``weightcheck`` fixture: the loader, drawing and
running examples within its capabilities, counts of what was exercised, and the last example
(written to a case file when the test fails).

Two things keep a broken loader's run short and its report readable:

- **a shrink budget per test**: once a test has failed, Hypothesis shrinks the example; after
  ``shrink_budget`` seconds of that, every new candidate is rejected unless it already ran
  (a failing example, for Hypothesis's final replay, or one that passed: Hypothesis may run an
  input again, and one that passed and is then rejected is a "flaky" test to it), so
  shrinking stops at the smallest example found by then (a note in the report says so);
- **an adapter error is reported once**: a loader that breaks the protocol (``load`` returning a
  list, say) fails the first test that meets it; the other tests are skipped, pointing there.

An expectation narrowed to features (``ID when FEATURE: reason``, ``conformance.expectations``)
is judged here, per example: a property failure of an example using one of the features is
counted (``known``) and the test goes on, as if that example had passed; Hypothesis never sees
it, so it neither stops nor shrinks there, and the failure it does report is one no entry
expects.  Such an example's features are counted apart (``KNOWN_PREFIX``) so that the matrix
never counts it as established.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import currently_in_test_context, event, reject
from hypothesis import strategies as st

from weightcheck.fixtures.case import Case

from .assertions import PropertyFailure, full_report
from .properties import NotSupported, property_named
from .protocol import AdapterError, LoaderAdapter
from .runner import Example, draw_example, run_example, unsupported
from .session import EXERCISED, KNOWN_FAILURES, KNOWN_PREFIX
from .timing import Clock, measuring



def _key(example: Example) -> str:
    return json.dumps(example.to_dict(), sort_keys=True)


@dataclass
class Failing:
    """The test's failure so far: when it first failed, and every example that failed (one of
    them is the example Hypothesis reports and replays last)."""

    since: float
    examples: set[str] = field(default_factory=set)
    budget_spent: bool = False


@dataclass
class Harness:
    """``clock``: when given, every example's time is split into the sections of
    ``conformance.timing`` (the benchmark's public hook; nothing is measured otherwise)."""

    loader: LoaderAdapter
    clock: Clock | None = None
    shrink_budget: float | None = None  # seconds (None: shrink fully); the plugin sets it
    verbose: int = 0  # pytest's -v count: -vv shows every problem and the case as JSON
    counts: dict[str, Counter] = field(default_factory=dict)
    last_example: dict[str, Example] = field(default_factory=dict)
    failing: dict[str, Failing] = field(default_factory=dict)
    passed: dict[str, set] = field(default_factory=dict)  # test -> keys of examples that passed
    adapter_error: tuple[str, str] | None = None  # (test that met it, message)
    known: dict[str, list] = field(default_factory=dict)  # test -> expectations narrowed by 'when'
    current: str = ""

    def __repr__(self) -> str:  # Hypothesis prints the fixture in every falsifying example
        return f"<weightcheck harness for {self.loader.spec}>"

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis's pretty printer asks this
        printer.text(repr(self))

    def check(self, prop: str, data: st.DataObject, family: str, device: str = "cpu") -> None:
        """Draw one example of ``prop`` for ``family`` and run it against the loader."""
        __tracebackhide__ = True
        self._skip_after_adapter_error()
        reason = property_named(prop).skip_reason(family, self.loader)
        if reason:
            pytest.skip(reason)
        with measuring(self.clock), full_report(self.verbose >= 2):
            example = draw_example(data, prop, family, self.loader.capabilities, device)
            self._within_budget(example)
            self.record(example.case, property_named(prop).input_of(example.extras))
            self.last_example[self.current] = example
            self.run(example)
            self._passed(example)

    def check_device(
        self, check, data: st.DataObject, family: str, methods: tuple[str, ...], device: str = "cuda"
    ) -> None:
        """Draw an FP8 case on ``device`` and run one of ``device_checks`` on it."""
        __tracebackhide__ = True
        from weightcheck.strategies.cases import fp8_cases

        self._skip_after_adapter_error()
        caps = self.loader.capabilities
        supported = tuple(m for m in methods if caps.supports(m))
        reason = property_named("roundtrip").skip_reason(family, self.loader)
        if reason is None and device.startswith("cuda") and not caps.supports("cuda"):
            reason = "not supported by the loader: cuda"
        if reason is None and not supported:
            reason = f"not supported by the loader: {', '.join(methods)}"
        if reason:
            pytest.skip(reason)
        with measuring(self.clock), full_report(self.verbose >= 2):
            case = data.draw(fp8_cases(family, caps, supported), label="case")
            case = replace(case, placement=replace(case.placement, device=device))
            example = Example(check.__name__, case)
            self._within_budget(example)
            self.record(case)
            self.last_example[self.current] = example
            try:
                self._failing_on_error(example, check, self.loader, case)
            except NotSupported as why:
                pytest.skip(f"not supported by the loader: {why}")
            self.counts[self.current][EXERCISED] += 1
            self._passed(example)

    def replay(self, path, prop: str) -> None:
        """Run one property on the case of a case file (its own draws if it is that property's)."""
        __tracebackhide__ = True
        from .casefiles import read_case_file

        self._skip_after_adapter_error()
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
        own = example.property == prop
        for extras in [example.extras] if own else prop_obj.replay_extras(example.case):
            replayed = Example(prop, example.case, extras)
            self.record(example.case, prop_obj.input_of(extras))
            self.last_example[self.current] = replayed
            with full_report(self.verbose >= 2):
                self.run(replayed)

    def run(self, example: Example) -> None:
        __tracebackhide__ = True
        features = example.case.features()
        expected = [e for e in self.known.get(self.current, ()) if e.covers(features)]
        try:
            outcome = self._failing_on_error(example, run_example, self.loader, example, expected=expected)
        except NotSupported as why:
            pytest.skip(f"not supported by the loader: {why}")
        except _Expected as known:
            brought = property_named(example.property).input_of(example.extras)
            self._count_known(known.entries, _counter_keys(features, brought))
            return
        if outcome.exercised:
            self.counts[self.current][EXERCISED] += 1
        if outcome.note and currently_in_test_context():
            event(f"{example.property}: {outcome.note}")

    def _failing_on_error(self, example: Example, fn, *args, expected=()):
        """Run ``fn``; remember a failure (for the shrink budget) and an adapter error.  A
        property failure that ``expected`` entries cover is no failure of the test."""
        __tracebackhide__ = True
        try:
            return fn(*args)
        except NotSupported:
            raise
        except PropertyFailure as exc:
            if expected:
                raise _Expected(expected) from exc
            self._remember(example)
            raise
        except AdapterError as exc:
            if self.adapter_error is None:
                self.adapter_error = (self.current, str(exc))
            self._remember(example)
            raise
        except Exception:
            self._remember(example)
            raise

    def _count_known(self, entries: list, keys: list[str]) -> None:
        """An expected failure: which entries expected it, and the example's counter keys
        (as ``record`` counted them) apart from those of the examples that passed."""
        counter = self.counts.setdefault(self.current, Counter())
        counter[KNOWN_FAILURES] += 1
        for entry in entries:
            counter[f"{KNOWN_PREFIX}entry {entry.label}: {entry.reason}"] += 1
        for key in keys:
            counter[KNOWN_PREFIX + key] += 1
        if currently_in_test_context():
            event("known failure (an expectation narrowed by 'when')")

    def _remember(self, example: Example) -> None:
        failing = self.failing.setdefault(self.current, Failing(time.monotonic()))
        failing.examples.add(_key(example))

    def _within_budget(self, example: Example) -> None:
        """Reject a shrink candidate once the test's shrink budget is spent, unless it is the
        failing example itself (so Hypothesis's final replay runs for real)."""
        failing = self.failing.get(self.current)
        if failing is None or self.shrink_budget is None:
            return
        if time.monotonic() - failing.since <= self.shrink_budget:
            return
        failing.budget_spent = True
        key = _key(example)
        if key not in failing.examples and key not in self.passed.get(self.current, ()):
            reject()

    def _passed(self, example: Example) -> None:
        if self.shrink_budget is not None:
            self.passed.setdefault(self.current, set()).add(_key(example))

    def _skip_after_adapter_error(self) -> None:
        if self.adapter_error is not None and self.adapter_error[0] != self.current:
            test, message = self.adapter_error
            pytest.skip(f"adapter error, reported once (in {test}): {message}")

    def record(self, case: Case, brought: str | None = None) -> None:
        """Count the example's features and the kind of input its property brought (and tell
        Hypothesis's statistics, inside a test)."""
        counter = self.counts.setdefault(self.current, Counter())
        counter["examples"] += 1
        features = case.features()
        counter.update(_counter_keys(features, brought))
        if currently_in_test_context():
            if brought:
                event(f"input: {brought}")
            for key, value in features.items():
                event(f"{key}: {('yes' if value else 'no') if isinstance(value, bool) else value}")


def _counter_keys(features: dict, brought: str | None) -> list[str]:
    """What one example adds to its test's counter: each feature it uses (``key``, or
    ``key=value`` for a named one such as the family) and the input its property brought."""
    keys = [key if isinstance(value, bool) else f"{key}={value}" for key, value in features.items() if value is not False]
    return keys + ([f"input {brought}"] if brought else [])


class _Expected(Exception):
    """A property failure that expectations narrowed by 'when' cover (``entries``)."""

    def __init__(self, entries: list) -> None:
        super().__init__(", ".join(e.label for e in entries))
        self.entries = entries
