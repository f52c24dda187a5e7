"""Where an example's time goes: named sections, reported to a clock when one is given.

The harness and the properties mark their steps with ``section(name)``; nothing is measured
unless a ``Clock`` is active (``Harness(loader, clock=Clock())`` activates it for each example),
so a normal run pays one context-variable lookup per step.  ``ci/benchmark.py`` reads the
figures through this public hook instead of patching the suite's functions.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from contextvars import ContextVar
from typing import Iterator

# The harness's sections, exclusive of each other; a loader's calls are "loader.<stage>".
HARNESS_SECTIONS = (
    "draw",  # drawing the case and the property's own extras (strategies, Case)
    "values",  # tensor values from the seed
    "write",  # config.json and the safetensors files
    "scratch",  # creating and removing the scratch directory
    "oracle",  # the expected state, the needed tensors
    "compare",  # comparing a state with the oracle's
    "digest",  # hashing the checkpoint directory (checkpoint_unchanged)
)
LOADER_STAGES = (
    "build", "load", "state", "check_loaded", "process_weights_after_loading", "linear_forward",
    "load_ranks",
)

_CLOCK: ContextVar["Clock | None"] = ContextVar("weightcheck_clock", default=None)


class Clock:
    """Accumulates exclusive time per section: a section's time excludes nested sections."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[float]] = []  # [start, time spent in children]

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
        self._stack.clear()

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        frame = [time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - frame[0]
            self._stack.pop()
            self.seconds[name] += elapsed - frame[1]
            self.calls[name] += 1
            if self._stack:
                self._stack[-1][1] += elapsed


@contextlib.contextmanager
def section(name: str) -> Iterator[None]:
    """Time the enclosed step as ``name`` on the active clock, if any."""
    clock = _CLOCK.get()
    if clock is None:
        yield
        return
    with clock.section(name):
        yield


@contextlib.contextmanager
def measuring(clock: Clock | None) -> Iterator[None]:
    """Make ``clock`` the active clock inside the block (None: measure nothing)."""
    token = _CLOCK.set(clock)
    try:
        yield
    finally:
        _CLOCK.reset(token)
