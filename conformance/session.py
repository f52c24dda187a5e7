"""What one pytest run of the suite holds, shared by the plugin's parts: the validated loader
and its harness, the run's options, and the keys test reports carry their records under.

Kept in ``config.stash`` (never in module globals), so that the plugin stays inert in runs
that do not use the suite and several runs in one process (pytester) do not see each other.

(PYTEST_DONT_REWRITE: the plugin's modules import each other; nothing here asserts.)
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .harness import Harness

SUITE_DIR = Path(__file__).resolve().parent
BUNDLED_REGRESSIONS = SUITE_DIR.parent / "fixtures" / "regressions"

# What each conformance test report carries in ``user_properties`` (they survive ``-n auto``).
TEST_PROPERTY = "weightcheck_test"
FEATURE_PROPERTY = "weightcheck_features"
FAILING_PROPERTY = "weightcheck_failing_features"
CASE_PROPERTY = "weightcheck_case"
# A test's counter of the examples that really checked what its property is about.
EXERCISED = "exercised"
# Examples whose failure an expectation narrowed by 'when' expected, and (under the prefix) their
# features, kept apart from those of the examples that passed.
KNOWN_FAILURES = "known failures"
KNOWN_PREFIX = "known: "


@dataclass
class RunOptions:
    out_dir: Path
    replay: Path | None
    regressions: list[Path]
    expectations: list
    report_json: Path | None
    shrink_budget: float | None = None


HARNESS_KEY = pytest.StashKey["Harness"]()
RUN_KEY = pytest.StashKey[RunOptions]()


def active(config: pytest.Config) -> bool:
    """Whether this run uses the suite (``--loader`` was given and is valid)."""
    return HARNESS_KEY in config.stash


def harness(config: pytest.Config) -> "Harness":
    return config.stash[HARNESS_KEY]


def run_options(config: pytest.Config) -> RunOptions:
    return config.stash[RUN_KEY]


def regression_files(dirs: list[Path]) -> list[Path]:
    """The bundled regression corpus, then each ``--regressions`` directory's case files."""
    files = sorted(BUNDLED_REGRESSIONS.glob("*.json"))
    for d in dirs:
        files += sorted(Path(d).glob("*.json"))
    return files


VERSIONED = ("weightcheck", "torch", "safetensors", "hypothesis")


def versions() -> dict[str, str]:
    """The versions a run reports (header, JSON report)."""
    out = {}
    for pkg in VERSIONED:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "(not installed)"
    return out
