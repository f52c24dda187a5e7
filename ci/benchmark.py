#!/usr/bin/env python
"""Throughput of the conformance properties, and where the time goes: harness or loader.

    python ci/benchmark.py --loader=weightcheck.reference_models.reference_loader \
        [--examples N] [--seed S] [--json OUT] [--suite-timing [--profile dev]]

For every property x family (default: every property of the suite and every family the loader
supports; ``--properties``/``--families`` pick a subset) it runs the property under Hypothesis
``@given(st.data())`` with ``max_examples=N``, no database, no deadline and no shrinking (phases
explicit + generate), drawing and running the example exactly as ``conformance/test_*.py`` do
(``Harness.check(prop, data, family)``).  Each row is the fastest of ``--repeat`` runs of the
same (derandomized or seeded) examples.  The time is split through the harness's public timing
hook (``Harness(loader, clock=Clock())``, ``weightcheck.conformance.timing``): the loader's calls
(``loader.build``, ``loader.load``, ...) are loader time; everything else (Hypothesis itself,
drawing, tensor values, writing safetensors, the oracle, the comparison, scratch directories)
is harness time, split into the sections the suite itself reports.

``--suite-timing`` also times the whole pytest suite in a subprocess, without xdist and with
``-n 2``.  Output is markdown, so it can be pasted into a README; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as a plain script from anywhere
    sys.path.insert(0, str(REPO))

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from weightcheck.conformance.harness import Harness  # noqa: E402
from weightcheck.conformance.profiles import CASE_HEALTH_CHECKS  # noqa: E402
from weightcheck.conformance.properties import PROPERTY_NAMES  # noqa: E402
from weightcheck.conformance.protocol import resolve_loader  # noqa: E402
from weightcheck.conformance.timing import HARNESS_SECTIONS, LOADER_STAGES, Clock  # noqa: E402
from weightcheck.families import FAMILY_NAMES  # noqa: E402
from weightcheck.fixtures.materialize import scratch_root  # noqa: E402

LOADER_SECTIONS = tuple(f"loader.{stage}" for stage in LOADER_STAGES)
# "hypothesis": the engine, outside the test body; "other": the rest of the test body
REPORTED_SECTIONS = ("hypothesis",) + HARNESS_SECTIONS + ("other",)
TARGET_RATE = 50.0  # examples/s per core
TARGET_HARNESS_SHARE = 50.0  # % of the total


@dataclass
class Result:
    property: str
    family: str
    examples: int = 0
    calls: int = 0  # test-function calls, including those abandoned while drawing
    total_s: float = 0.0
    cpu_s: float = 0.0  # process CPU time; well below total_s means the machine was busy
    loader_s: float = 0.0
    status: str = "ok"
    sections: dict[str, float] = field(default_factory=dict)

    @property
    def harness_s(self) -> float:
        return self.total_s - self.loader_s

    @property
    def rate(self) -> float:
        return self.examples / self.total_s if self.total_s else 0.0

    @property
    def harness_pct(self) -> float:
        return 100.0 * self.harness_s / self.total_s if self.total_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "property": self.property,
            "family": self.family,
            "examples": self.examples,
            "calls": self.calls,
            "total_s": self.total_s,
            "cpu_s": self.cpu_s,
            "examples_per_s": self.rate,
            "loader_s": self.loader_s,
            "harness_s": self.harness_s,
            "harness_pct": self.harness_pct,
            "status": self.status,
            "sections_s": dict(self.sections),
        }


def hypothesis_settings(examples: int, seed: int | None) -> settings:
    return settings(
        max_examples=examples,
        derandomize=seed is None,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=CASE_HEALTH_CHECKS,  # as the weightcheck profiles do
        print_blob=False,
    )


def run_property(
    harness: Harness, clock: Clock, prop: str, family: str, examples: int, seed: int | None
) -> Result:
    counter = {"calls": 0, "examples": 0}

    def test(data):
        # A call Hypothesis abandons while drawing (overrun, discarded choice sequence) is not
        # an example; its time still counts, as harness time.  A property failure counts.
        counter["calls"] += 1
        with clock.section("other"):
            try:
                harness.check(prop, data, family)
            except (pytest.skip.Exception, AssertionError):
                counter["examples"] += 1
                raise
            counter["examples"] += 1

    test.__name__ = test.__qualname__ = f"bench_{prop}_{family}"
    test = given(data=st.data())(test)
    test = hypothesis_settings(examples, seed)(test)
    if seed is not None:
        test = hypothesis_seed(seed)(test)

    result = Result(prop, family)
    clock.reset()
    harness.current = f"{prop}[{family}]"
    cpu_start, start = time.process_time(), time.perf_counter()
    try:
        test()
    except pytest.skip.Exception as reason:
        result.status = f"skipped: {getattr(reason, 'msg', None) or reason}"
    except Exception as exc:  # a failing property: report it, keep benchmarking the others
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result.status = f"FAILED: {type(exc).__name__}: {first}"[:200]
    result.total_s = time.perf_counter() - start
    result.cpu_s = time.process_time() - cpu_start
    harness.counts.clear()
    result.examples = counter["examples"]
    result.calls = counter["calls"]
    result.loader_s = sum(clock.seconds.get(s, 0.0) for s in LOADER_SECTIONS)
    sections = {name: clock.seconds.get(name, 0.0) for name in LOADER_SECTIONS + REPORTED_SECTIONS}
    sections["hypothesis"] = result.total_s - sum(clock.seconds.values())
    result.sections = sections
    return result


def combine(prop: str, family: str, parts: list[Result]) -> Result:
    out = Result(prop, family)
    out.examples = sum(p.examples for p in parts)
    out.calls = sum(p.calls for p in parts)
    out.total_s = sum(p.total_s for p in parts)
    out.cpu_s = sum(p.cpu_s for p in parts)
    out.loader_s = sum(p.loader_s for p in parts)
    bad = [f"{p.property}/{p.family}: {p.status}" for p in parts if p.status != "ok"]
    out.status = "; ".join(bad) if bad else "ok"
    keys = {k for p in parts for k in p.sections}
    out.sections = {k: sum(p.sections.get(k, 0.0) for p in parts) for k in keys}
    return out


# --------------------------------------------------------------------------------------------
# Whole-suite timing


def _profile_derandomized(profile: str) -> bool:
    from weightcheck.conformance.profiles import register_profiles

    register_profiles()
    try:
        return bool(settings.get_profile(profile).derandomize)
    except Exception:
        return False


def time_suite(
    loader: str, profile: str, mode: str, seed: int, timeout: float, extra_env: dict[str, str]
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "pytest", f"--loader={loader}", "-q", "-p", "no:cacheprovider",
        f"--hypothesis-profile={profile}",
    ]
    cmd += ["-p", "no:xdist"] if mode == "serial" else ["-n", "2"]
    if not _profile_derandomized(profile):
        # the same examples in both runs (the plugin would pick a random seed per run)
        cmd.append(f"--hypothesis-seed={seed}")
    storage = tempfile.mkdtemp(prefix="weightcheck-bench-hypothesis-")
    # a fresh, private example database, so neither run replays what the other saved
    env = dict(os.environ, **extra_env, HYPOTHESIS_STORAGE_DIRECTORY=storage)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, output = None, f"timed out after {timeout:.0f}s\n{exc.stdout or ''}"
    wall = time.perf_counter() - start
    shutil.rmtree(storage, ignore_errors=True)
    summary = ""
    for line in reversed(output.splitlines()):
        if re.search(r"\b(passed|failed|error|skipped|no tests ran)\b", line):
            summary = line.strip("= ").strip()
            break
    return {
        "mode": mode,
        "command": " ".join(
            [f"{k}={v}" for k, v in extra_env.items()] + [Path(cmd[0]).name] + cmd[1:]
        ),
        "wall_s": wall,
        "returncode": rc,
        "summary": summary,
        "output_tail": output[-3000:] if rc != 0 else "",
    }


# --------------------------------------------------------------------------------------------
# Output


def md_table(headers: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main_table(results: list[Result], overall: Result) -> str:
    headers = [
        "property", "family", "examples", "total s", "examples/s", "loader s", "harness s",
        "harness %",
    ]
    rows = []
    for r in results + [overall]:
        bold = "**" if r is overall else ""
        if r.examples == 0:  # skipped before any example: nothing to rate
            rows.append([r.property, r.family, 0, f"{r.total_s:.2f}", "-", "-", "-", "-"])
            continue
        rows.append([
            f"{bold}{r.property}{bold}", r.family, r.examples, f"{r.total_s:.2f}",
            f"{r.rate:.1f}", f"{r.loader_s:.2f}", f"{r.harness_s:.2f}", f"{r.harness_pct:.1f}",
        ])
    return md_table(headers, rows, "llrrrrrr")


def breakdown_table(results: list[Result]) -> str:
    cols = [s for s in REPORTED_SECTIONS + LOADER_SECTIONS]
    headers = ["property", "family", "calls"] + [c.replace("loader.", "L.") for c in cols]
    rows = []
    for r in results:
        if r.examples == 0:
            continue
        rows.append(
            [r.property, r.family, r.calls]
            + [f"{1000 * r.sections.get(c, 0.0) / max(r.examples, 1):.2f}" for c in cols]
        )
    return md_table(headers, rows, "llr" + "r" * len(cols))


def environment() -> dict[str, Any]:
    from importlib import metadata

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "?"

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "hypothesis": version("hypothesis"),
        "safetensors": version("safetensors"),
        "scratch_root": scratch_root() or tempfile.gettempdir(),
    }


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loader", required=True, help="MODULE[:ATTR], as for pytest --loader")
    p.add_argument("--examples", type=int, default=100, help="max_examples per property x family")
    p.add_argument(
        "--seed", type=int, default=None,
        help="Hypothesis seed (default: derandomize=True, the same examples on every run)",
    )
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    p.add_argument(
        "--properties", default=",".join(PROPERTY_NAMES),
        help=f"comma-separated subset of {','.join(PROPERTY_NAMES)}",
    )
    p.add_argument("--families", default=",".join(FAMILY_NAMES), help="comma-separated families")
    p.add_argument(
        "--repeat", type=int, default=3,
        help="run each property x family this many times (the same examples) and keep the "
        "fastest, to damp noise from other processes; default 3",
    )
    p.add_argument(
        "--warmup", type=int, default=3,
        help="untimed examples per property x family first (imports, torch caches); 0: none",
    )
    p.add_argument(
        "--torch-threads", type=int, default=1,
        help="torch.set_num_threads for the in-process benchmark (1: per-core numbers; "
        "0: leave torch's default)",
    )
    p.add_argument("--suite-timing", action="store_true", help="also time the pytest suite")
    p.add_argument("--profile", default="dev", help="Hypothesis profile for --suite-timing")
    p.add_argument(
        "--suite-repeat", type=int, default=1,
        help="time each pytest run this many times, interleaved, and keep the fastest",
    )
    p.add_argument(
        "--suite-env", action="append", default=[], metavar="NAME=VALUE",
        help="environment for the pytest runs (repeatable), e.g. OMP_NUM_THREADS=1",
    )
    p.add_argument(
        "--suite-timeout", type=float, default=3600, help="seconds per pytest run, at most"
    )
    args = p.parse_args(argv)
    args.properties = [x for x in args.properties.split(",") if x]
    args.families = [x for x in args.families.split(",") if x]
    unknown = sorted(set(args.properties) - set(PROPERTY_NAMES)) + sorted(
        set(args.families) - set(FAMILY_NAMES)
    )
    if unknown:
        p.error(f"unknown properties or families: {unknown}")
    try:
        args.suite_env = dict(item.split("=", 1) for item in args.suite_env)
    except ValueError:
        p.error("--suite-env takes NAME=VALUE")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.examples < 1:
        p.error("--examples must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    adapter = resolve_loader(args.loader)
    clock = Clock()
    harness = Harness(adapter, clock=clock)
    families = [f for f in args.families if f in adapter.capabilities.families]
    env = environment()

    print(f"# weightcheck benchmark: `{args.loader}` ({adapter.name})\n")
    print(
        f"python {env['python']}, torch {env['torch']} ({env['torch_threads']} thread(s)), "
        f"hypothesis {env['hypothesis']}, safetensors {env['safetensors']}, "
        f"{env['cpus']} CPU(s), scratch in {env['scratch_root']}  "
    )
    how = f"seed {args.seed}" if args.seed is not None else "derandomized"
    print(
        f"max_examples={args.examples} per property x family, {how}, no database, no deadline, "
        f"phases explicit+generate (no shrinking), warm-up {args.warmup} example(s), "
        f"fastest of {args.repeat} run(s) per row\n",
        flush=True,
    )
    skipped = sorted(set(args.families) - set(families))
    if skipped:
        print(f"(families not supported by the loader, skipped: {skipped})\n")

    results: list[Result] = []
    if args.warmup:
        for prop in args.properties:
            for family in families:
                run_property(harness, clock, prop, family, args.warmup, args.seed)
    for prop in args.properties:
        for family in families:
            runs = [
                run_property(harness, clock, prop, family, args.examples, args.seed)
                for _ in range(args.repeat)
            ]
            r = min(runs, key=lambda x: x.total_s)  # same examples each time: least noise
            results.append(r)
            print(
                f"  {prop}/{family}: {r.examples} examples in {r.total_s:.2f}s "
                f"({r.rate:.1f}/s, harness {r.harness_pct:.0f}%) {r.status}",
                file=sys.stderr, flush=True,
            )
    ok = [r for r in results if r.status == "ok"]
    overall = combine("all" if len(ok) == len(results) else "all (rows ok)", "all", ok)
    per_property = [
        combine(prop, "all", [r for r in results if r.property == prop])
        for prop in args.properties
    ]

    print("## Examples per second, loader vs harness time\n")
    print(main_table(results, overall))
    print()
    cpu_share = overall.cpu_s / overall.total_s if overall.total_s else 1.0
    if cpu_share < 0.9:
        print(
            f"Note: this process got the CPU for only {100 * cpu_share:.0f}% of the wall time; "
            "other processes competed for the cores, so absolute rates are pessimistic (the "
            "harness share is less affected).\n"
        )
    print("### Per property (all families)\n")
    print(main_table(per_property, overall))
    print()
    failures = [r for r in results if r.status.startswith("FAILED")]
    not_ok = [r for r in results if r.status != "ok"]
    for r in not_ok:
        print(f"- {r.property}/{r.family}: {r.status}")
    if not_ok:
        print("\n(rows not ok stop early: they are left out of the overall row)\n")

    print("### Where the time goes (ms per example)\n")
    print(
        "Per example (the examples column above).  calls: test-function calls, including "
        "those Hypothesis abandons while drawing (their time is harness time).  "
        "hypothesis: the engine outside the test body; the other columns are the sections "
        "the suite reports (weightcheck.conformance.timing); other: the rest of the test "
        "body; L.*: the loader's calls.\n"
    )
    print(breakdown_table(results + [overall]))
    print()

    verdicts = []
    rate_ok = overall.rate >= TARGET_RATE
    share_ok = overall.harness_pct <= TARGET_HARNESS_SHARE
    slow = [f"{r.property}/{r.family}" for r in ok if r.rate < TARGET_RATE]
    heavy = [f"{r.property}/{r.family}" for r in ok if r.harness_pct > TARGET_HARNESS_SHARE]
    verdicts.append(
        f"- throughput: {overall.rate:.1f} examples/s overall on "
        f"{env['torch_threads']} torch thread(s), target >= {TARGET_RATE:g}/s per core: "
        f"{'OK' if rate_ok else 'MISSED'}" + (f" (below target: {', '.join(slow)})" if slow else "")
    )
    verdicts.append(
        f"- harness share: {overall.harness_pct:.1f}% of the time overall, target <= "
        f"{TARGET_HARNESS_SHARE:g}%: {'OK' if share_ok else 'MISSED'}"
        + (f" (above target: {', '.join(heavy)})" if heavy else "")
    )
    print("### Targets\n")
    print("\n".join(verdicts))
    print()

    suite: list[dict[str, Any]] = []
    if args.suite_timing:
        seed = args.seed if args.seed is not None else 0
        env_text = " ".join(f"{k}={v}" for k, v in args.suite_env.items())
        print(
            f"## Whole suite, profile `{args.profile}`"
            + (f", with `{env_text}`" if env_text else "") + "\n",
            flush=True,
        )
        runs: dict[str, list[dict[str, Any]]] = {"serial": [], "xdist-2": []}
        for i in range(args.suite_repeat):  # interleaved, so load from elsewhere hits both
            for mode in runs:
                print(f"  running pytest ({mode}, {i + 1}/{args.suite_repeat}) ...",
                      file=sys.stderr, flush=True)
                runs[mode].append(
                    time_suite(
                        args.loader, args.profile, mode, seed, args.suite_timeout, args.suite_env
                    )
                )
        for mode, tries in runs.items():
            best = dict(min(tries, key=lambda t: t["wall_s"]))
            best["all_wall_s"] = [t["wall_s"] for t in tries]
            suite.append(best)
        rows = [
            [
                s["mode"], f"{s['wall_s']:.1f}", " / ".join(f"{w:.1f}" for w in s["all_wall_s"]),
                s["returncode"], s["summary"],
            ]
            for s in suite
        ]
        print(md_table(["run", "wall s (best)", "all runs s", "exit", "pytest summary"], rows,
                       "lrrrl"))
        serial, parallel = suite
        speedup = serial["wall_s"] / parallel["wall_s"] if parallel["wall_s"] else 0.0
        print(f"\nspeed-up with `-n 2`: {speedup:.2f}x\n")
        for s in suite:
            print(f"- `{s['command']}`")
        print()
        for s in suite:
            if s["returncode"] not in (0,):
                print(f"pytest ({s['mode']}) exited {s['returncode']}; tail:\n```\n"
                      f"{s['output_tail']}\n```\n")

    if args.json:
        payload = {
            "loader": args.loader,
            "environment": env,
            "settings": {
                "examples": args.examples,
                "seed": args.seed,
                "derandomize": args.seed is None,
                "warmup": args.warmup,
                "repeat": args.repeat,
            },
            "results": [r.as_dict() for r in results],
            "per_property": [r.as_dict() for r in per_property],
            "overall": overall.as_dict(),
            "targets": {
                "examples_per_s": TARGET_RATE,
                "harness_pct": TARGET_HARNESS_SHARE,
                "rate_ok": rate_ok,
                "harness_share_ok": share_ok,
            },
            "suite_env": args.suite_env,
            "suite": suite,
        }
        if suite:
            payload["suite_speedup"] = suite[0]["wall_s"] / suite[1]["wall_s"]
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"(JSON written to {args.json})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
