"""Searching one property against one loader under Hypothesis, outside the pytest plugin.

For the suite's own tests and the CI scripts (the mutation matrix, the benchmark's kin): cases
are drawn and run exactly as the conformance test modules do (``runner.draw_example`` and
``run_example``), stopping at the first failure, without shrinking.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hypothesis import Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import UnsatisfiedAssumption

from weightcheck.capabilities import Capabilities

from .assertions import PropertyFailure
from .profiles import CASE_HEALTH_CHECKS
from .properties import NotSupported, property_named
from .protocol import LoaderAdapter
from .runner import draw_example, run_example


def adapter(loader) -> LoaderAdapter:
    caps = Capabilities.coerce(getattr(loader, "capabilities", None))
    return LoaderAdapter(spec=getattr(loader, "name", "test loader"), target=loader, capabilities=caps)


@dataclass
class SearchResult:
    """One property x family searched under Hypothesis, stopped at the first failure.

    ``examples`` counts the examples that ran the property, up to and including the first
    failing one (all of them when nothing failed; draws Hypothesis abandons are not counted); ``seconds`` is the wall time to that point.  ``first_error`` is
    the exception the first failing example raised; ``raised`` is what the Hypothesis run
    raised in the end (the same failure replayed, or e.g. a flaky-failure error).  ``skipped``
    says why the property was not judged (not applicable, ``NotSupported``, or no example
    exercised it: a search that checked nothing is not a pass).
    """

    prop: str
    family: str
    examples: int = 0
    seconds: float = 0.0
    first_error: BaseException | None = None
    raised: BaseException | None = None
    skipped: str | None = None
    exercised: int = 0  # examples that really checked what the property is about

    @property
    def failed(self) -> bool:
        return self.skipped is None and (self.raised is not None or self.first_error is not None)

    @property
    def failure(self) -> BaseException | None:
        return (self.first_error or self.raised) if self.failed else None


def run_search(
    loader,
    prop: str,
    family: str,
    max_examples: int = 100,
    *,
    seed: int | None = None,
) -> SearchResult:
    """Search ``prop`` on ``family`` for up to ``max_examples`` examples, stopping at the first
    failure (no shrinking).  Derandomized unless ``seed`` is given (then seeded, as the ``dev``
    and ``nightly`` profiles run without ``derandomize``)."""
    wrapped = loader if isinstance(loader, LoaderAdapter) else adapter(loader)
    result = SearchResult(prop, family)
    reason = property_named(prop).skip_reason(family, wrapped)
    if reason:
        result.skipped = reason
        return result
    start = time.perf_counter()

    @settings(
        max_examples=max_examples,
        derandomize=seed is None,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=CASE_HEALTH_CHECKS,  # as the suite's profiles
    )
    @given(data=st.data())
    def run(data):
        # Counts the examples that ran the property (drawn in full), up to the first failure.
        try:  # drawn and run exactly as conformance/test_*.py do (Harness.check)
            outcome = run_example(wrapped, draw_example(data, prop, family, wrapped.capabilities))
        except UnsatisfiedAssumption:
            raise  # Hypothesis control flow (a filtered draw gave up): not an example
        except Exception as exc:
            if result.first_error is None:
                result.examples += 1
                result.first_error = exc
                result.seconds = time.perf_counter() - start
            raise
        if result.first_error is None:
            result.examples += 1
            result.exercised += outcome.exercised

    if seed is not None:
        run = hypothesis_seed(seed)(run)
    try:
        run()
    except NotSupported as reason:
        result.skipped = f"not supported by the loader: {reason}"
    except Exception as exc:
        result.raised = exc
    if result.first_error is None:
        result.seconds = time.perf_counter() - start
        if result.skipped is None and result.examples and not result.exercised:
            why = property_named(prop).not_exercised or "no example checked it"
            result.skipped = f"not exercised: {why}"
    elif isinstance(result.first_error, NotSupported):
        result.skipped = f"not supported by the loader: {result.first_error}"
    return result


def search(
    loader, prop: str, family: str, max_examples: int = 100, seed: int | None = None
) -> PropertyFailure | None:
    """The first failure of ``prop`` in ``max_examples`` derandomized (or seeded) examples, or
    None; an error other than a property failure propagates."""
    result = run_search(loader, prop, family, max_examples, seed=seed)
    if result.raised is None or isinstance(result.raised, PropertyFailure):
        return result.raised
    raise result.raised
