"""The weightcheck pytest plugin (entry point ``pytest11: weightcheck``).

It stays inert unless the conformance tests are collected or ``--loader`` is given, so
installing weightcheck never changes another project's test run (and never imports torch
there: the heavy modules are imported once the suite is really in use).  Its parts, by concern:
``options`` (options, profiles, seeds, the header), ``collection`` (what runs and its ids,
expected failures), ``reporting`` (case files, replay commands, the matrix, the JSON report).

(PYTEST_DONT_REWRITE: the plugin's modules import each other; nothing here asserts.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from .session import active, harness

if TYPE_CHECKING:
    from .harness import Harness

pytest_plugins = (
    "weightcheck.conformance.options",
    "weightcheck.conformance.collection",
    "weightcheck.conformance.reporting",
)


@pytest.fixture(scope="session")
def weightcheck(pytestconfig: pytest.Config) -> "Harness":
    """The loader under test and case drawing within its capabilities."""
    if not active(pytestconfig):
        raise pytest.UsageError("the weightcheck fixture needs --loader=MODULE[:ATTR]")
    return harness(pytestconfig)
