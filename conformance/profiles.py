"""Hypothesis profiles for the conformance suite.

``dev`` is the default for a local run: one random seed per run, printed and shared by every
xdist worker; ``ci`` is derandomized (the same examples on every run and every worker, no
example database), for gating merges; ``nightly`` runs ten times the examples of ``ci`` with
Hypothesis's example database on (so no forced seed: Hypothesis turns the database off when a
seed is given), so a failure found at night replays first the next time, from the uploaded
database artifact.  Case files replay any failure whatever the profile.
Deadlines are off: loaders vary in speed and a slow example is not a wrong one.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

DEV_EXAMPLES = 50
CI_EXAMPLES = 100
PROFILES = ("dev", "ci", "nightly")
DEFAULT_PROFILE = "dev"
DATABASE_PROFILES = ("nightly",)
# Seconds of shrinking per failing test (--shrink-budget overrides): a broken loader fails every
# test, and shrinking each in full would cost minutes; a night has the time to shrink further.
SHRINK_BUDGETS = {"dev": 3.0, "ci": 3.0, "nightly": 30.0}
DEFAULT_SHRINK_BUDGET = 3.0


# Whole cases are big draws (about one data_too_large in a few hundred) and each example writes
# a checkpoint and builds and loads a model (too_slow by Hypothesis's measure): neither is a
# problem of the test.  Every other health check stays on.
CASE_HEALTH_CHECKS = (HealthCheck.too_slow, HealthCheck.data_too_large)


def register_profiles() -> None:
    common = {"deadline": None, "suppress_health_check": list(CASE_HEALTH_CHECKS)}
    default = settings.get_profile("default")
    settings.register_profile("dev", parent=default, max_examples=DEV_EXAMPLES, **common)
    settings.register_profile(
        "ci", parent=default, max_examples=CI_EXAMPLES, derandomize=True, database=None, **common
    )
    settings.register_profile("nightly", parent=default, max_examples=10 * CI_EXAMPLES, **common)
