#!/usr/bin/env python
"""Throughput of the conformance properties, and where the time goes: harness or loader.

    python ci/benchmark.py --loader=reference_models.reference_loader \
        [--examples N] [--seed S] [--json OUT] [--suite-timing [--profile dev]]

For every property x family it runs the property under Hypothesis ``@given(st.data())`` with
``max_examples=N``, no database, no deadline and no shrinking (phases explicit + generate),
drawing the case exactly as ``conformance/test_*.py`` do (``Harness.draw_case``,
``Harness.draw_relayout``, the dropped tensor from ``properties.needed_tensors``).  The loader
from ``resolve_loader`` is wrapped so its ``build``/``load``/``state`` calls are timed; all other
time (Hypothesis itself, drawing, tensor values, writing safetensors, the oracle, the
comparison, scratch directories) is harness time.

Unless ``--no-breakdown`` is given, the harness time is further split by timing (exclusively,
so nested sections are not counted twice) the helpers ``conformance.properties`` calls.  This
patches module attributes in this process only; no file is changed.

``--suite-timing`` also times the whole pytest suite in a subprocess, without xdist and with
``-n 2``.  Output is markdown, so it can be pasted into a README; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as a plain script from anywhere
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from hypothesis import HealthCheck, Phase, event, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fixtures.materialize as materialize  # noqa: E402
from conformance import properties  # noqa: E402
from conformance.harness import Harness  # noqa: E402
from conformance.protocol import FAMILIES, LoaderAdapter, resolve_loader  # noqa: E402

PROPERTIES = ("roundtrip", "tracking", "missing_tensor", "invariance", "checkpoint_unchanged")
LOADER_SECTIONS = ("loader.build", "loader.load", "loader.state")
HARNESS_SECTIONS = (
    "hypothesis",  # the engine, outside the test body: choice sequences, health checks, events
    "draw",  # data.draw of the case, second layout and dropped tensor (strategies, Case)
    "values",  # case_tensors: torch.randn per tensor
    "write",  # write_case: config.json and the safetensors files
    "scratch",  # mkdtemp + rmtree of the scratch directory
    "oracle",  # expected_state, needed_tensors
    "compare",  # state_mismatches
    "digest",  # directory_digest (checkpoint_unchanged)
    "other",  # the rest of the test body (tracking sets, Case.features, ...)
)
TARGET_RATE = 50.0  # examples/s per core
TARGET_HARNESS_SHARE = 50.0  # % of the total


# --------------------------------------------------------------------------------------------
# Timing


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
    def section(self, name: str):
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

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            with self.section(name):
                return fn(*args, **kwargs)

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed


class TimedLoader:
    """A ``LoaderAdapter`` look-alike whose build/load/state time is loader time."""

    def __init__(self, adapter: LoaderAdapter, clock: Clock) -> None:
        self._adapter = adapter
        self._clock = clock

    spec = property(lambda self: self._adapter.spec)
    target = property(lambda self: self._adapter.target)
    capabilities = property(lambda self: self._adapter.capabilities)
    name = property(lambda self: self._adapter.name)

    def build(self, arch, placement):
        with self._clock.section("loader.build"):
            return self._adapter.build(arch, placement)

    def load(self, model, checkpoint):
        with self._clock.section("loader.load"):
            return self._adapter.load(model, checkpoint)

    def state(self, model):
        with self._clock.section("loader.state"):
            return self._adapter.state(model)


@contextlib.contextmanager
def harness_breakdown(clock: Clock):
    """Time the harness helpers that ``conformance.properties`` calls (this process only)."""
    original_scratch = properties.scratch_dir

    @contextlib.contextmanager
    def scratch_dir():
        cm = original_scratch()
        with clock.section("scratch"):
            path = cm.__enter__()
        try:
            yield path
        except BaseException:
            with clock.section("scratch"):
                if not cm.__exit__(*sys.exc_info()):
                    raise
        else:
            with clock.section("scratch"):
                cm.__exit__(None, None, None)

    patches = [
        (properties, "scratch_dir", scratch_dir),
        (properties, "case_tensors", clock.wrap("values", properties.case_tensors)),
        # write_case(case, path) without tensors calls case_tensors itself (checkpoint_unchanged)
        (materialize, "case_tensors", clock.wrap("values", materialize.case_tensors)),
        (properties, "write_case", clock.wrap("write", properties.write_case)),
        (properties, "directory_digest", clock.wrap("digest", properties.directory_digest)),
        (properties, "_expected", clock.wrap("oracle", properties._expected)),
        (properties, "state_mismatches", clock.wrap("compare", properties.state_mismatches)),
    ]
    saved = [(mod, attr, getattr(mod, attr)) for mod, attr, _ in patches]
    try:
        for mod, attr, new in patches:
            setattr(mod, attr, new)
        yield
    finally:
        for mod, attr, old in saved:
            setattr(mod, attr, old)


# --------------------------------------------------------------------------------------------
# The properties, drawn as conformance/test_*.py draw them


class TimedHarness(Harness):
    """``Harness`` whose drawing is timed as 'draw' (same draws, same labels)."""

    clock: Clock = None  # type: ignore[assignment]

    def draw_case(self, data, family):
        with self.clock.section("draw"):
            return super().draw_case(data, family)

    def draw_relayout(self, data, case):
        with self.clock.section("draw"):
            return super().draw_relayout(data, case)


class Skipped(Exception):
    """What ``pytest.skip`` does in test_tracking: the property does not apply to the loader."""


def body_roundtrip(h: Harness, data, family: str) -> None:
    case = h.draw_case(data, family)
    properties.roundtrip(h.loader, case)


def body_tracking(h: Harness, data, family: str) -> None:
    case = h.draw_case(data, family)
    try:
        properties.tracking(h.loader, case)
    except properties.NotSupported as reason:
        raise Skipped(f"not supported by the loader: {reason}") from None


def body_missing_tensor(h: TimedHarness, data, family: str) -> None:
    case = h.draw_case(data, family)
    with h.clock.section("oracle"):
        needed = properties.needed_tensors(case)
    with h.clock.section("draw"):
        dropped = data.draw(st.sampled_from(needed), label="dropped tensor")
    how = properties.missing_tensor(h.loader, case, dropped)
    event(f"missing tensor detected by: {how}")


def body_invariance(h: Harness, data, family: str) -> None:
    case = h.draw_case(data, family)
    other = h.draw_relayout(data, case)
    properties.invariance(h.loader, case, other)


def body_checkpoint_unchanged(h: Harness, data, family: str) -> None:
    case = h.draw_case(data, family)
    properties.checkpoint_unchanged(h.loader, case)


BODIES: dict[str, Callable] = {
    "roundtrip": body_roundtrip,
    "tracking": body_tracking,
    "missing_tensor": body_missing_tensor,
    "invariance": body_invariance,
    "checkpoint_unchanged": body_checkpoint_unchanged,
}


@dataclass
class Result:
    property: str
    family: str
    examples: int = 0
    calls: int = 0  # test-function calls, including those abandoned while drawing
    total_s: float = 0.0
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
        # as the weightcheck profiles do: tiny-but-slow examples are not a health problem
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=False,
    )


def run_property(
    harness: TimedHarness, clock: Clock, prop: str, family: str, examples: int, seed: int | None
) -> Result:
    body = BODIES[prop]
    counter = {"calls": 0, "examples": 0}

    def test(data):
        # A call Hypothesis abandons while drawing (overrun, discarded choice sequence) is not
        # an example; its time still counts, as harness time.  A property failure counts.
        counter["calls"] += 1
        with clock.section("other"):
            try:
                body(harness, data, family)
            except (Skipped, properties.PropertyFailure, AssertionError):
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
    start = time.perf_counter()
    try:
        test()
    except Skipped as reason:
        result.status = f"skipped: {reason}"
    except Exception as exc:  # a failing property: report it, keep benchmarking the others
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result.status = f"FAILED: {type(exc).__name__}: {first}"[:200]
    result.total_s = time.perf_counter() - start
    harness.counts.clear()
    result.examples = counter["examples"]
    result.calls = counter["calls"]
    result.loader_s = sum(clock.seconds.get(s, 0.0) for s in LOADER_SECTIONS)
    sections = {name: clock.seconds.get(name, 0.0) for name in LOADER_SECTIONS + HARNESS_SECTIONS}
    sections["hypothesis"] = result.total_s - sum(clock.seconds.values())
    result.sections = sections
    return result


def combine(prop: str, family: str, parts: list[Result]) -> Result:
    out = Result(prop, family)
    out.examples = sum(p.examples for p in parts)
    out.calls = sum(p.calls for p in parts)
    out.total_s = sum(p.total_s for p in parts)
    out.loader_s = sum(p.loader_s for p in parts)
    bad = [f"{p.property}/{p.family}: {p.status}" for p in parts if p.status != "ok"]
    out.status = "; ".join(bad) if bad else "ok"
    keys = {k for p in parts for k in p.sections}
    out.sections = {k: sum(p.sections.get(k, 0.0) for p in parts) for k in keys}
    return out


# --------------------------------------------------------------------------------------------
# Whole-suite timing


def _profile_derandomized(profile: str) -> bool:
    from conformance.profiles import register_profiles

    register_profiles()
    try:
        return bool(settings.get_profile(profile).derandomize)
    except Exception:
        return False


def time_suite(loader: str, profile: str, mode: str, seed: int, timeout: float) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "pytest", f"--loader={loader}", "-q", "-p", "no:cacheprovider",
        f"--hypothesis-profile={profile}",
    ]
    cmd += ["-p", "no:xdist"] if mode == "serial" else ["-n", "2"]
    if not _profile_derandomized(profile):
        # the same examples in both runs (the plugin would pick a random seed per run)
        cmd.append(f"--hypothesis-seed={seed}")
    storage = tempfile.mkdtemp(prefix="weightcheck-bench-hypothesis-")
    env = dict(os.environ, HYPOTHESIS_STORAGE_DIRECTORY=storage)  # a fresh, private database
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
        "command": " ".join(cmd),
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
        rows.append([
            f"{bold}{r.property}{bold}", r.family, r.examples, f"{r.total_s:.2f}",
            f"{r.rate:.1f}", f"{r.loader_s:.2f}", f"{r.harness_s:.2f}", f"{r.harness_pct:.1f}",
        ])
    return md_table(headers, rows, "llrrrrrr")


def breakdown_table(results: list[Result]) -> str:
    cols = [s for s in HARNESS_SECTIONS + LOADER_SECTIONS]
    headers = ["property", "family", "calls"] + [c.replace("loader.", "L.") for c in cols]
    rows = []
    for r in results:
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
        "scratch_root": materialize.scratch_root() or tempfile.gettempdir(),
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
        "--properties", default=",".join(PROPERTIES),
        help=f"comma-separated subset of {','.join(PROPERTIES)}",
    )
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated families")
    p.add_argument(
        "--warmup", type=int, default=3,
        help="untimed examples per property x family first (imports, torch caches); 0: none",
    )
    p.add_argument(
        "--torch-threads", type=int, default=1,
        help="torch.set_num_threads for the in-process benchmark (1: per-core numbers; "
        "0: leave torch's default)",
    )
    p.add_argument(
        "--no-breakdown", action="store_true",
        help="time only the loader calls; do not split the harness time by helper",
    )
    p.add_argument("--suite-timing", action="store_true", help="also time the pytest suite")
    p.add_argument("--profile", default="dev", help="Hypothesis profile for --suite-timing")
    p.add_argument(
        "--suite-timeout", type=float, default=3600, help="seconds per pytest run, at most"
    )
    args = p.parse_args(argv)
    args.properties = [x for x in args.properties.split(",") if x]
    args.families = [x for x in args.families.split(",") if x]
    unknown = sorted(set(args.properties) - set(PROPERTIES)) + sorted(
        set(args.families) - set(FAMILIES)
    )
    if unknown:
        p.error(f"unknown properties or families: {unknown}")
    if args.examples < 1:
        p.error("--examples must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    adapter = resolve_loader(args.loader)
    clock = Clock()
    TimedHarness.clock = clock
    harness = TimedHarness(TimedLoader(adapter, clock))  # type: ignore[arg-type]
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
        f"phases explicit+generate (no shrinking), warm-up {args.warmup} example(s)\n",
        flush=True,
    )
    skipped = sorted(set(args.families) - set(families))
    if skipped:
        print(f"(families not supported by the loader, skipped: {skipped})\n")

    breakdown = contextlib.nullcontext() if args.no_breakdown else harness_breakdown(clock)
    results: list[Result] = []
    with breakdown:
        if args.warmup:
            for prop in args.properties:
                for family in families:
                    run_property(harness, clock, prop, family, args.warmup, args.seed)
        for prop in args.properties:
            for family in families:
                r = run_property(harness, clock, prop, family, args.examples, args.seed)
                results.append(r)
                print(
                    f"  {prop}/{family}: {r.examples} examples in {r.total_s:.2f}s "
                    f"({r.rate:.1f}/s, harness {r.harness_pct:.0f}%) {r.status}",
                    file=sys.stderr, flush=True,
                )
    overall = combine("all", "all", results)
    per_property = [
        combine(prop, "both", [r for r in results if r.property == prop])
        for prop in args.properties
    ]

    print("## Examples per second, loader vs harness time\n")
    print(main_table(results, overall))
    print()
    print("### Per property (both families)\n")
    print(main_table(per_property, overall))
    print()
    failures = [r for r in results if r.status != "ok"]
    for r in failures:
        print(f"- {r.property}/{r.family}: {r.status}")
    if failures:
        print()

    if not args.no_breakdown:
        print("### Where the time goes (ms per example)\n")
        print(
            "Per example (the examples column above).  calls: test-function calls, including "
            "those Hypothesis abandons while drawing (their time is harness time).  "
            "hypothesis: the engine outside the test body; draw: drawing case/layout/dropped "
            "tensor; values: case_tensors; write: write_case (safetensors + config); scratch: "
            "mkdtemp/rmtree; oracle: expected_state, needed_tensors; compare: state_mismatches; "
            "digest: directory_digest; other: rest of the test body; L.*: the loader's calls.\n"
        )
        print(breakdown_table(results + [overall]))
        print()

    verdicts = []
    rate_ok = overall.rate >= TARGET_RATE
    share_ok = overall.harness_pct <= TARGET_HARNESS_SHARE
    slow = [f"{r.property}/{r.family}" for r in results if r.rate < TARGET_RATE]
    heavy = [f"{r.property}/{r.family}" for r in results if r.harness_pct > TARGET_HARNESS_SHARE]
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
        print(f"## Whole suite, profile `{args.profile}`\n", flush=True)
        for mode in ("serial", "xdist-2"):
            print(f"  running pytest ({mode}) ...", file=sys.stderr, flush=True)
            suite.append(time_suite(args.loader, args.profile, mode, seed, args.suite_timeout))
        rows = [
            [s["mode"], f"{s['wall_s']:.1f}", s["returncode"], s["summary"]] for s in suite
        ]
        print(md_table(["run", "wall s", "exit", "pytest summary"], rows, "lrrl"))
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
                "breakdown": not args.no_breakdown,
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
            "suite": suite,
        }
        if suite:
            payload["suite_speedup"] = suite[0]["wall_s"] / suite[1]["wall_s"]
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"(JSON written to {args.json})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
