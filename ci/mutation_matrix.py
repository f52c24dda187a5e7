#!/usr/bin/env python
"""The mutation matrix: does the suite catch every known loading bug, and how fast?

    python ci/mutation_matrix.py [--profile ci|dev|nightly] [--seed S] [--examples N]
        [--seeds N] [--mutants a,b] [--skip-reference] [--jobs J] [--json OUT] [--markdown]

For every mutant of ``reference_models/mutants/`` (a reference loader with one real bug put back) it runs
the conformance properties in the order the suite defines them (roundtrip, tracking,
missing_tensor, invariance, checkpoint_unchanged, reload, lora_equivalence, all_ranks), each
over every family the mutant's loader supports (not only the families the mutant was written
for: a good suite catches the bug wherever it shows), for the profile's number of examples per
test, and stops at the first failure: the kill.  Cases are drawn as ``conformance/test_*.py``
draw them (``tests/helpers.run_search``), in process, without shrinking, so "examples" and
"seconds" are what the suite spends before it first reports the bug.  Examples are counted
across all the tests run before the kill, and within the killing test.  "bug's symptom" says
whether the killing failure shows the mutant's own bug (contains the message fragment the
mutant declares in ``reference_models/mutants/``) or some other defect of the mutant.

Profiles (``conformance/profiles.py``): ``ci`` 100 examples per test, derandomized (the same
examples on every run; the fixed sample differs from the pytest run's, whose seed is a digest of
each test function); ``dev`` 50 and ``nightly`` 1000, seeded (``--seed``, default 0; no example
database).  ``--examples`` overrides the count.

The reference loader is run as a control row at the same profile (``--skip-reference`` to leave
it out): every property on every family must pass (all are run, all failures listed), else the
properties are wrong (or flaky) and the matrix means nothing.

``--seeds N`` repeats each kill search with seeds 0..N-1 at the dev example count
(non-derandomized) and reports each mutant's kill rate and median examples to kill; the goal is
100% for every mutant.  The reference control runs under the same N seeds.  This mode runs
``--jobs`` worker processes (default: one per CPU); otherwise the default is one, so that the
seconds are not skewed by contention.  ``--json OUT`` writes everything (``schema_version``).

Exit status: 1 if a mutant survives (in ``--seeds`` mode: is not killed under every seed) or the
reference fails a property; 2 on a usage error; else 0.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as a plain script from anywhere
    sys.path.insert(0, str(REPO))

import hypothesis  # noqa: E402
import torch  # noqa: E402

from weightcheck.conformance.assertions import PropertyFailure  # noqa: E402
from weightcheck.conformance.profiles import CI_EXAMPLES, DEV_EXAMPLES  # noqa: E402
from weightcheck.capabilities import Capabilities  # noqa: E402
from weightcheck.families import FAMILY_NAMES  # noqa: E402
from weightcheck.conformance.properties import PROPERTY_NAMES as PROPERTIES  # noqa: E402  (the suite's order)
from weightcheck.reference_models.reference_loader import loader as reference_loader  # noqa: E402
from weightcheck.conformance.search import run_search  # noqa: E402
from weightcheck.reference_models.mutants import BY_NAME, MUTANTS  # noqa: E402

SCHEMA_VERSION = 1
REFERENCE = "reference"
MESSAGE_CHARS = 4000  # of a failure message kept in the JSON


@dataclass(frozen=True)
class Profile:
    name: str
    examples: int
    derandomize: bool


PROFILES = {
    "dev": Profile("dev", DEV_EXAMPLES, False),
    "ci": Profile("ci", CI_EXAMPLES, True),
    "nightly": Profile("nightly", 10 * CI_EXAMPLES, False),
}


@dataclass
class Outcome:
    """One kill search of one loader: properties x families until the first failure.

    For the reference control (``stop_at_first=False``) every test runs and all failures are
    listed.  ``examples``/``seconds`` run to the first failure (or the end); ``examples_in_test``
    is the failing example's number within its test.
    """

    target: str
    seed: int | None
    max_examples: int
    killed: bool = False
    prop: str | None = None
    family: str | None = None
    examples: int = 0
    examples_in_test: int = 0
    seconds: float = 0.0
    error_type: str | None = None
    message: str | None = None
    # Whether the first failure shows the mutant's bug (its message fragment from
    # reference_models/mutants/), not an unrelated defect of the mutant; None for the reference.
    symptom: bool | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    tests: list[dict[str, Any]] = field(default_factory=list)
    total_examples: int = 0
    total_seconds: float = 0.0

    @property
    def killer(self) -> str:
        return f"{self.prop} [{self.family}]" if self.killed else "-"


def families_of(loader) -> list[str]:
    """The families the loader declares (all of them unless it declares capabilities)."""
    caps = Capabilities.coerce(getattr(loader, "capabilities", None))
    return [f for f in FAMILY_NAMES if f in caps.families]


def loader_of(target: str):
    return reference_loader if target == REFERENCE else BY_NAME[target].loader


def kill_search(
    target: str,
    max_examples: int,
    seed: int | None = None,
    *,
    stop_at_first: bool = True,
    properties: Iterable[str] = PROPERTIES,
) -> Outcome:
    """Run ``properties`` x families against ``target`` (a mutant name or ``"reference"``),
    ``max_examples`` per test, derandomized (``seed`` None) or seeded."""
    loader = loader_of(target)
    outcome = Outcome(target, seed, max_examples)
    start = time.perf_counter()
    for prop in properties:
        for family in families_of(loader):
            began = time.perf_counter() - start
            result = run_search(loader, prop, family, max_examples, seed=seed)
            test = {
                "property": prop,
                "family": family,
                "examples": result.examples,
                "seconds": round(result.seconds, 4),
                "failed": result.failed,
                "skipped": result.skipped,
            }
            outcome.tests.append(test)
            outcome.total_examples += result.examples
            unjudged = target == REFERENCE and result.skipped and not result.skipped.startswith("not applicable")
            if not result.failed and not unjudged:
                continue
            if unjudged:  # the control judges every property it supports: a skip is a failure
                failure = AssertionError(f"the reference loader was not judged: {result.skipped}")
            else:
                failure = result.failure
            text = str(failure) if isinstance(failure, PropertyFailure) else f"{type(failure).__name__}: {failure}"
            outcome.failures.append({**test, "error_type": type(failure).__name__, "message": text[:MESSAGE_CHARS]})
            if not outcome.killed:
                outcome.killed = True
                outcome.prop, outcome.family = prop, family
                outcome.examples = outcome.total_examples
                outcome.examples_in_test = result.examples
                outcome.seconds = began + result.seconds
                outcome.error_type = type(failure).__name__
                outcome.message = text[:MESSAGE_CHARS]
                if target != REFERENCE:
                    outcome.symptom = BY_NAME[target].message in text
            if stop_at_first:
                break
        if outcome.killed and stop_at_first:
            break
    outcome.total_seconds = time.perf_counter() - start
    if not outcome.killed:
        outcome.examples, outcome.seconds = outcome.total_examples, outcome.total_seconds
    return outcome


# --- running many searches (in worker processes with --jobs > 1) --------------------------------


def _task(args: tuple[str, int, int | None, bool, bool]) -> Outcome:
    target, max_examples, seed, stop_at_first, target_first = args
    properties = PROPERTIES
    if target_first and target != REFERENCE:
        own = BY_NAME[target].caught_by
        properties = (own, *(p for p in PROPERTIES if p != own))
    return kill_search(target, max_examples, seed, stop_at_first=stop_at_first, properties=properties)


def _init_worker() -> None:
    torch.set_num_threads(1)


def run_tasks(tasks: list[tuple[str, int, int | None, bool, bool]], jobs: int, progress: bool) -> list[Outcome]:
    """Run the kill searches; the results in the order of ``tasks``."""
    results: dict[int, Outcome] = {}

    def report(i: int, outcome: Outcome) -> None:
        results[i] = outcome
        if progress:
            seed = "" if outcome.seed is None else f" seed {outcome.seed}"
            verdict = (
                f"{'FAILED' if outcome.target == REFERENCE else 'killed'} by {outcome.killer}"
                if outcome.killed
                else ("passed" if outcome.target == REFERENCE else "SURVIVED")
            )
            print(
                f"[{len(results)}/{len(tasks)}] {outcome.target}{seed}: {verdict}, "
                f"{outcome.examples} examples, {outcome.seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )

    if jobs <= 1:
        for i, task in enumerate(tasks):
            report(i, _task(task))
    else:
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker) as pool:
            futures = {pool.submit(_task, task): i for i, task in enumerate(tasks)}
            for future in as_completed(futures):
                report(futures[future], future.result())
    return [results[i] for i in range(len(tasks))]


# --- summaries ----------------------------------------------------------------------------------


def first_line(text: str | None, limit: int = 160) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def mutant_info(name: str) -> dict[str, Any]:
    m = BY_NAME[name]
    return {
        "name": m.name,
        "bug": m.bug,
        "origin": m.origin,
        "caught_by": m.caught_by,
        "declared_families": list(m.families),
        "families": families_of(m.loader),
    }


def seed_summary(outcomes: list[Outcome]) -> dict[str, Any]:
    killed = [o for o in outcomes if o.killed]
    return {
        "run_count": len(outcomes),
        "killed_count": len(killed),
        "kill_rate": len(killed) / len(outcomes) if outcomes else 0.0,
        "median_examples_to_kill": statistics.median(o.examples for o in killed) if killed else None,
        "median_seconds_to_kill": round(statistics.median(o.seconds for o in killed), 3) if killed else None,
        "killed_by": dict(Counter(o.killer for o in killed).most_common()),
        "killed_with_symptom": sum(bool(o.symptom) for o in killed),
        "survived_seeds": [o.seed for o in outcomes if not o.killed],
    }


def _rate(rate: float) -> str:
    return f"{rate * 100:.0f}%"


def table(headers: list[str], rows: list[list[str]], markdown: bool, right: Iterable[int] = ()) -> str:
    right = set(right)
    if markdown:
        escape = lambda cell: cell.replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(headers) + " |"]
        lines.append("|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|")
        lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    fmt = lambda row: "  ".join(  # noqa: E731
        c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)
    ).rstrip()
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def reference_verdict(outcomes: list[Outcome]) -> str:
    failed = [o for o in outcomes if o.killed]
    examples = sum(o.total_examples for o in outcomes)
    seconds = sum(o.total_seconds for o in outcomes)
    runs = f" under {len(outcomes)} seeds" if len(outcomes) > 1 else ""
    if not failed:
        return f"reference: passed ({examples} examples{runs}, {seconds:.1f} s)"
    lines = [f"reference: FAILED{runs} ({len(failed)} of {len(outcomes)} runs)"]
    for o in failed:
        seed = "" if o.seed is None else f" (seed {o.seed})"
        for f in o.failures:
            lines.append(f"  {f['property']} [{f['family']}]{seed}: {first_line(f['message'], 400)}")
    return "\n".join(lines)


def profile_report(mutants: list[Outcome], ref: list[Outcome], markdown: bool, total: float) -> str:
    rows = []
    for o in mutants:
        info = BY_NAME[o.target]
        where = f"{o.killer}, example {o.examples_in_test}" if o.killed else "-"
        rows.append(
            [
                o.target,
                f"{info.bug} ({info.origin})",
                "killed" if o.killed else "SURVIVED",
                where,
                "-" if not o.killed else ("yes" if o.symptom else "NO"),
                str(o.examples),
                f"{o.seconds:.2f}",
            ]
        )
    headers = ["mutant", "bug (origin)", "result", "first killed by", "bug's symptom", "examples", "seconds"]
    if not markdown:  # the long text last, so the short columns line up
        order = [0, 2, 3, 4, 5, 6, 1]
        headers = [headers[i] for i in order]
        rows = [[r[i] for i in order] for r in rows]
    out = [table(headers, rows, markdown, right=(5, 6) if markdown else (4, 5))]
    killed = sum(o.killed for o in mutants)
    out.append("")
    out.append(
        f"killed {killed} of {len(mutants)} mutants; "
        f"seconds until the kills: {sum(o.seconds for o in mutants):.1f} s; "
        f"total {total:.1f} s wall"
    )
    survivors = [o.target for o in mutants if not o.killed]
    if survivors:
        out.append(f"SURVIVED: {', '.join(survivors)}")
    off = [o.target for o in mutants if o.killed and not o.symptom]
    if off:
        out.append(
            "killed by a failure without the bug's symptom (the message fragment of reference_models/mutants/), "
            f"i.e. by another defect of the mutant: {', '.join(off)}"
        )
    if ref:
        out.append(reference_verdict(ref))
    return "\n".join(out)


def seeds_report(by_mutant: dict[str, list[Outcome]], ref: list[Outcome], markdown: bool, total: float) -> str:
    rows = []
    for name, outcomes in by_mutant.items():
        s = seed_summary(outcomes)
        killers = ", ".join(f"{k} {v}" for k, v in s["killed_by"].items()) or "-"
        rows.append(
            [
                name,
                _rate(s["kill_rate"]),
                f"{s['killed_count']}/{s['run_count']}",
                f"{s['killed_with_symptom']}/{s['killed_count']}",
                "-" if s["median_examples_to_kill"] is None else f"{s['median_examples_to_kill']:g}",
                "-" if s["median_seconds_to_kill"] is None else f"{s['median_seconds_to_kill']:.2f}",
                killers,
                ", ".join(map(str, s["survived_seeds"])) or "-",
            ]
        )
    headers = [
        "mutant", "kill rate", "killed", "with symptom", "median examples", "median s",
        "killed by (runs)", "survived seeds",
    ]
    out = [table(headers, rows, markdown, right=(1, 2, 3, 4, 5))]
    full = sum(all(o.killed for o in outcomes) for outcomes in by_mutant.values())
    runs = sum(len(v) for v in by_mutant.values())
    kills = sum(o.killed for v in by_mutant.values() for o in v)
    out.append("")
    out.append(
        f"{full} of {len(by_mutant)} mutants killed under every seed; {kills} of {runs} runs killed; "
        f"total {total:.1f} s wall"
    )
    below = [n for n, v in by_mutant.items() if not all(o.killed for o in v)]
    if below:
        out.append(f"below 100%: {', '.join(below)}")
    if ref:
        out.append(reference_verdict(ref))
    return "\n".join(out)


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "hypothesis": hypothesis.__version__,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None, help="default: ci")
    parser.add_argument("--seed", type=int, default=None, help="seed for dev/nightly (default 0)")
    parser.add_argument("--examples", type=int, default=None, help="examples per test (overrides the profile)")
    parser.add_argument("--seeds", type=int, default=None, metavar="N", help="kill rates over seeds 0..N-1 (dev)")
    parser.add_argument("--mutants", default=None, help="comma-separated mutant names (default: all)")
    parser.add_argument("--skip-reference", action="store_true", help="do not run the reference control")
    parser.add_argument(
        "--target-first", action="store_true",
        help="search each mutant's own property first, then the others in the suite's order: "
        "whether every mutant is killed, fast (CI); the default order measures how fast the "
        "suite, run as it runs, reports each bug",
    )
    parser.add_argument(
        "--jobs", type=int, default=None,
        help="worker processes (default: 1, so timings are undisturbed; with --seeds: the CPU count)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the results as JSON")
    parser.add_argument("--markdown", action="store_true", help="markdown tables")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.mutants:
        names = [n.strip() for n in args.mutants.split(",") if n.strip()]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            parser.error(f"unknown mutants {unknown}; known: {', '.join(BY_NAME)}")
        args.mutants = names
    else:
        args.mutants = [m.name for m in MUTANTS]
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.examples is not None and args.examples < 1:
        parser.error("--examples must be at least 1")
    if args.seeds is not None and args.profile not in (None, "dev"):
        parser.error("--seeds runs at the dev profile (seeded, dev example count); drop --profile")
    args.profile = args.profile or "ci"
    if args.jobs is None:
        args.jobs = (os.cpu_count() or 1) if args.seeds is not None else 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    seeded = args.seeds is not None
    if seeded:
        profile = PROFILES["dev"]
        seeds: list[int | None] = list(range(args.seeds))
    else:
        profile = PROFILES[args.profile]
        seeds = [None if profile.derandomize else (0 if args.seed is None else args.seed)]
    examples = args.examples or profile.examples

    tasks = [(name, examples, s, True, args.target_first) for name in args.mutants for s in seeds]
    if not args.skip_reference:
        tasks += [(REFERENCE, examples, s, False, False) for s in seeds]
    outcomes = run_tasks(tasks, args.jobs, progress=not args.quiet)
    total = time.perf_counter() - start

    by_mutant: dict[str, list[Outcome]] = {name: [] for name in args.mutants}
    ref: list[Outcome] = []
    for o in outcomes:
        (ref if o.target == REFERENCE else by_mutant[o.target]).append(o)

    mode = f"{len(seeds)} seeds (0..{len(seeds) - 1}), dev profile" if seeded else f"profile {profile.name}"
    sampling = "derandomized" if seeds == [None] else ("seeded" if seeded else f"seed {seeds[0]}")
    order = "each mutant's own property first" if args.target_first else "the suite's property order"
    print(f"mutation matrix: {mode}, {examples} examples per property x family, {sampling}, {order}")
    print()
    if seeded:
        print(seeds_report(by_mutant, ref, args.markdown, total))
    else:
        print(profile_report([v[0] for v in by_mutant.values()], ref, args.markdown, total))

    survived = any(not o.killed for v in by_mutant.values() for o in v)
    reference_failed = any(o.killed for o in ref)
    code = 1 if survived or reference_failed else 0

    if args.json:
        mutants_json = []
        for name, v in by_mutant.items():
            entry = {**mutant_info(name), "runs": [asdict(o) for o in v]}
            if seeded:
                entry.update(seed_summary(v), killed=all(o.killed for o in v))
            else:
                o = v[0]
                entry.update(
                    killed=o.killed,
                    killed_by={"property": o.prop, "family": o.family} if o.killed else None,
                    examples_to_kill=o.examples if o.killed else None,
                    examples_in_killing_test=o.examples_in_test if o.killed else None,
                    seconds_to_kill=round(o.seconds, 4) if o.killed else None,
                    symptom=o.symptom,
                )
            mutants_json.append(entry)
        document = {
            "schema_version": SCHEMA_VERSION,
            "mode": "seeds" if seeded else "profile",
            "profile": profile.name,
            "examples_per_test": examples,
            "derandomize": seeds == [None],
            "seeds": seeds,
            "properties": list(PROPERTIES),
            "families": list(FAMILY_NAMES),
            "mutants": mutants_json,
            "reference": None
            if args.skip_reference
            else {
                "passed": not reference_failed,
                "runs": [asdict(o) for o in ref],
            },
            "totals": {
                "mutants": len(by_mutant),
                "killed": sum(all(o.killed for o in v) for v in by_mutant.values()),
                "runs": sum(len(v) for v in by_mutant.values()),
                "runs_killed": sum(o.killed for v in by_mutant.values() for o in v),
                "seconds_to_kill": round(sum(o.seconds for v in by_mutant.values() for o in v), 3),
                "wall_seconds": round(total, 3),
            },
            "environment": environment(),
            "exit_code": code,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
