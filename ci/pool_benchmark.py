#!/usr/bin/env python
"""vLLM or SGLang through the rank pool (weightcheck.adapters.pool): throughput, start-up,
recycling, memory, and a soak.  A benchmark script, not a test: it prints markdown (``--json``
writes the numbers).

    PYTHONPATH="$(bash ci/adapters/install_vllm.sh --print-path):$PWD" VLLM_TARGET_DEVICE=cpu \\
        python ci/pool_benchmark.py [--examples 40] [--soak 1000] [--json OUT]
    PYTHONPATH="$(bash ci/adapters/install_sglang.sh --print-path):$PWD" SGLANG_USE_CPU_ENGINE=1 \\
        python ci/pool_benchmark.py --engine sglang [--examples 40] [--soak 1000] [--json OUT]

``--engine sglang`` (adapters/sglang_loader.py) differs where SGLang's adapter does: it runs
tensor parallel 1, 2 and 4 only (world size = tp size), tp 1 always in this process (so the
1-rank row is the in-process one, and the pool rows are 2 and 4 ranks), worlds of 1, 2 and 4
at start-up, the memory build at tp 4, recycling at tp 2 and the soak on tp 2 only (per-expert
checkpoints: SGLang does not declare fused expert checkpoints).  The rest below is vLLM's run.

- Start-up: the first world (forkserver start with vLLM preloaded), then worlds of 1, 2, 4 and
  8 ranks from the warm forkserver; memory (RSS, PSS) and fds per rank process.
- Throughput at 1, 2 and 4 ranks: the suite's ``roundtrip`` (one build, load, state of one
  rank: a single-rank property) and ``all_ranks`` (every rank of the world in one world run)
  properties, run through the harness exactly as ``conformance/test_*.py`` run them
  (``Harness(loader, clock=Clock())``, Hypothesis, derandomized), with the loader's
  placements restricted to worlds of that many ranks.  Failing examples (vLLM's known
  findings) are counted and the run goes on.  The time of an example is split into: harness
  (everything that is not the loader), engine build and engine load (what the rank process
  spent building / loading, reported by its engine), state (reading the state back) and pool
  overhead (the loader's time minus the engine's: pipes, pickling, waiting for the world).
  Rank 1 is also run in this process (no pool), the adapter's default for one rank.
- Recycling: stopping and restarting a world, and its first example afterwards (vLLM's groups
  are created again), against a warm example.
- Soak: ``--soak`` examples of the ``roundtrip`` property for Qwen3-MoE on worlds of 2 ranks
  (tp 2, pp 2, ep 2, tp 2 x ep 2; random shapes and checkpoints; the MoE path is the one that
  leaks in vLLM), time per example and the largest fd count and RSS among the rank processes
  per window of 100, with recycling every ``--recycle`` world runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")

import torch  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from weightcheck.capabilities import Capabilities  # noqa: E402
from weightcheck.conformance.assertions import PropertyFailure  # noqa: E402
from weightcheck.conformance.harness import Harness  # noqa: E402
from weightcheck.conformance.timing import Clock  # noqa: E402


# --- the engines -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    """What differs between the engines' adapters, for this benchmark."""

    name: str  # --engine
    title: str  # in the report
    module: str  # the adapter's module
    pool_sizes: tuple[int, ...]  # worlds of the throughput table run in the pool
    startup_sizes: tuple[int, ...]  # worlds started from the warm forkserver

    def adapter(self):
        import importlib

        return importlib.import_module(self.module)

    def version(self) -> str:
        if self.name == "vllm":
            return f"vllm {self.adapter().VLLM_VERSION}"
        import sglang

        return f"sglang {sglang.__version__}"

    def pooled(self):
        """A loader whose multi-rank worlds run in the pool."""
        if self.name == "vllm":
            return self.adapter().VllmLoader(single="pool")
        return self.adapter().SglangLoader()

    def world_size(self, placement) -> int:
        if self.name == "vllm":
            return self.adapter().layout(placement).world_size
        return placement.tp_size * placement.pp_size  # SGLang's adapter: a world of tp x pp ranks

    def memory_case(self):
        """A first build at 4 ranks: vLLM tp 2 x pp 2, SGLang tp 4."""
        from weightcheck.arch import Arch, Placement

        arch = Arch("llama", 64, 4, 4, 2, 16, 64, 100)
        if self.name == "vllm":
            return arch, Placement((2, 2), tp_size=2, tp_rank=1, pp_size=2, pp_rank=1)
        return arch, Placement((4,), tp_size=4, tp_rank=1)

    def recycling_placement(self):
        """A world of 2: vLLM tp 2 x ep 2, SGLang tp 2."""
        from weightcheck.arch import Placement

        if self.name == "vllm":
            return Placement((2,), tp_size=2, tp_rank=1, ep_size=2, ep_rank=1)
        return Placement((2,), tp_size=2, tp_rank=1)


ENGINES = {
    "vllm": Engine("vllm", "vLLM", "weightcheck.adapters.vllm_loader", (1, 2, 4), (1, 2, 4, 8)),
    # SGLang's adapter runs tp 1 in this process and tp 2, 4 in the pool (tp 1, 2, 4 only)
    "sglang": Engine("sglang", "SGLang", "weightcheck.adapters.sglang_loader", (2, 4), (1, 2, 4)),
}


# --- the loader, restricted to worlds of one size ---------------------------------------------


class OneWorldSize:
    """The engine's loader, declaring only placements whose engine world has ``size`` ranks.
    ``in_process``: the loader runs these worlds in this process (no pool to ask for timings)."""

    def __init__(self, inner, size: int, engine: Engine | None = None, in_process: bool = False):
        engine = engine or ENGINES["vllm"]
        self.inner, self.size, self.engine = inner, size, engine
        if in_process:
            self._pool = None
        caps = inner.capabilities

        def reason(placement, arch):
            return caps.placement_reason(placement, arch) or (
                None if engine.world_size(placement) == size else f"benchmark: not a world of {size}"
            )

        self.name = f"{inner.name}, worlds of {size}"
        self.capabilities = Capabilities(families=caps.families, features=caps.features, placements=reason)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def engine_timings(loader) -> dict[str, list[float]]:
    """Seconds and counts per request kind, summed over every rank process (and reset)."""
    out: dict[str, list[float]] = {}
    pool = loader._pool
    if pool is None:
        return out
    for world in pool.worlds.values():
        if not world.running:
            continue
        for rank in range(world.size):
            for kind, (seconds, count) in world.call(rank, {"op": "timings"}).items():
                entry = out.setdefault(kind, [0.0, 0])
                entry[0] += seconds
                entry[1] += count
    return out


@dataclass
class Row:
    label: str
    examples: int = 0
    failed: int = 0
    total_s: float = 0.0
    harness_s: float = 0.0
    loader_s: float = 0.0
    engine_build_s: float = 0.0
    engine_load_s: float = 0.0
    engine_state_s: float = 0.0
    engine_groups_s: float = 0.0
    pool_overhead_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.examples / self.total_s if self.total_s else 0.0

    def per_example_ms(self, seconds: float) -> float:
        return 1000 * seconds / self.examples if self.examples else 0.0


def run_property(loader_target, prop: str, family: str, examples: int, label: str) -> Row:
    adapter = resolve_loader_from(loader_target)
    clock = Clock()
    harness = Harness(adapter, clock=clock)
    harness.current = f"{prop}[{family}]"
    row = Row(label)
    engine_timings(loader_target)  # reset

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(data=st.data())
    def test(data):
        try:
            harness.check(prop, data, family)
        except PropertyFailure:
            row.failed += 1
        row.examples += 1

    clock.reset()
    start = time.perf_counter()
    test()
    row.total_s = time.perf_counter() - start
    row.loader_s = sum(s for name, s in clock.seconds.items() if name.startswith("loader."))
    row.harness_s = row.total_s - row.loader_s
    timings = engine_timings(loader_target)
    if loader_target._pool is None or not timings:
        # in this process: the loader's time is the engine's
        row.engine_build_s = clock.seconds.get("loader.build", 0.0)
        row.engine_load_s = clock.seconds.get("loader.load", 0.0) + clock.seconds.get("loader.load_ranks", 0.0)
        row.engine_state_s = clock.seconds.get("loader.state", 0.0)
    else:
        # the active rank's work; load_ranks builds and loads in one request
        row.engine_build_s = timings.get("build", [0.0])[0]
        row.engine_load_s = timings.get("load", [0.0])[0] + timings.get("load_ranks", [0.0])[0]
        row.engine_state_s = timings.get("state", [0.0])[0]
        row.engine_groups_s = timings.get("groups", [0.0])[0]
        engine = row.engine_build_s + row.engine_load_s + row.engine_state_s
        if prop == "all_ranks":  # the ranks of a world work side by side: count one rank's share
            size = loader_target.size
            engine = engine / size
            row.engine_build_s /= size
            row.engine_load_s /= size
            row.engine_state_s /= size
        row.pool_overhead_s = max(0.0, row.loader_s - engine)
    return row


def resolve_loader_from(target, engine: Engine | None = None):
    """A LoaderAdapter around an object (resolve_loader takes a module path)."""
    from weightcheck.conformance.protocol import LoaderAdapter

    engine = engine or getattr(target, "engine", None) or ENGINES["vllm"]
    caps = Capabilities.coerce(getattr(target, "capabilities", None))
    return LoaderAdapter(spec=engine.module, target=target, capabilities=caps)


# --- start-up, memory, recycling ------------------------------------------------------------


def memory_of(world) -> dict[str, float]:
    mems = world.memory()
    return {
        "rss_mb": max(m["rss"] for m in mems) / 2**20,
        "pss_mb": statistics.mean(m["pss"] for m in mems) / 2**20,
        "fds": max(m["fds"] for m in mems),
    }


def startup(loader, engine: Engine | None = None) -> dict[str, Any]:
    engine = engine or ENGINES["vllm"]
    pool = loader.pool
    out: dict[str, Any] = {}
    start = time.perf_counter()
    pool.world(1).run([{"op": "noop"}])
    out["first_world_s"] = time.perf_counter() - start  # forkserver start, the engine imported once
    for size in engine.startup_sizes:
        world = pool.world(size)
        world.stop()
        start = time.perf_counter()
        world.run([{"op": "noop"}] * size)
        out[f"world_{size}_start_s"] = time.perf_counter() - start
    # memory after a first build at 4 ranks (vLLM tp 2 x pp 2, SGLang tp 4)
    arch, placement = engine.memory_case()
    model = loader.build(arch, placement)
    del model
    out["memory_world_4"] = memory_of(pool.world(4))
    return out


def recycling(loader, examples: int, engine: Engine | None = None) -> dict[str, Any]:
    """Restart a world of 2 and time its first example against warm ones."""
    from weightcheck.arch import Arch, MoE

    arch = Arch("qwen3_moe", 64, 2, 4, 2, 16, 64, 100, moe=MoE(4, 2, 16))
    placement = (engine or ENGINES["vllm"]).recycling_placement()

    def one() -> float:
        start = time.perf_counter()
        model = loader.build(arch, placement)
        loader.state(model)
        return time.perf_counter() - start

    one()
    warm = statistics.median(one() for _ in range(examples))
    world = loader.pool.world(2)
    start = time.perf_counter()
    world.stop()
    stop_s = time.perf_counter() - start
    start = time.perf_counter()
    world.run([{"op": "noop"}] * 2)
    start_s = time.perf_counter() - start
    first = one()
    return {"stop_s": stop_s, "start_s": start_s, "first_example_s": first, "warm_example_s": warm,
            "recycle_cost_s": stop_s + start_s + first - warm}


def soak_cases(examples: int, seed: int = 0, engine: Engine | None = None):
    """Qwen3-MoE cases on worlds of 2 ranks: tp 2, pp 2, ep 2 (DP 2) or tp 2 x ep 2 (SGLang:
    tp 2 only, per-expert checkpoints), random shapes, expert counts, dense layers, partitions
    and checkpoint layouts."""
    import random

    from weightcheck.arch import Arch, MoE, Placement
    from weightcheck.fixtures.case import Case, CheckpointRecipe
    from weightcheck.reference_models.families import checkpoint_specs

    sglang = engine is not None and engine.name == "sglang"
    rng = random.Random(seed)
    for i in range(examples):
        kind = "tp" if sglang else rng.choice(["tp", "pp", "ep", "tp_ep"])
        tp = 2 if kind in ("tp", "tp_ep") else 1
        pp = 2 if kind == "pp" else 1
        ep = 2 if kind in ("ep", "tp_ep") else 1
        layers = rng.randint(pp, 4)
        experts = rng.randint(max(2, tp), 8)
        dense = tuple(sorted(rng.sample(range(layers), rng.randint(0, layers - 1))))
        heads = tp * rng.randint(1, 2)
        kv = rng.choice([k for k in range(1, heads + 1) if heads % k == 0 and (k % tp == 0 or tp % k == 0)])
        arch = Arch(
            "qwen3_moe", rng.randint(1, 8) * 4, layers, heads, kv, rng.choice([2, 4]), tp * rng.randint(1, 4),
            rng.randint(1, 200), tie_word_embeddings=rng.random() < 0.3,
            moe=MoE(experts, rng.randint(1, min(experts, 4)), tp * rng.randint(1, 4), dense_layers=dense),
        )
        cut = rng.randint(1, layers - 1) if pp == 2 else layers
        partition = (cut, layers - cut) if pp == 2 else (layers,)
        rank = rng.randrange(2)
        placement = Placement(partition, tp, rank if tp == 2 else 0, pp, rank if pp == 2 else 0,
                              ep, rank if ep == 2 else 0)
        fmt = "per_expert" if sglang else rng.choice(["per_expert", "fused_experts"])
        names = sorted(checkpoint_specs(arch, fmt))
        rng.shuffle(names)
        files = [names] if rng.random() < 0.5 else [names[: len(names) // 2], names[len(names) // 2:]]
        yield Case(arch, placement, CheckpointRecipe(i, files, fmt))


def soak(examples: int, recycle: int, engine: Engine | None = None) -> dict[str, Any]:
    """``examples`` roundtrip examples of Qwen3-MoE on worlds of 2 ranks (vLLM's MoE path leaks a
    little per example), run as the suite runs the property; windows of 100."""
    from weightcheck.conformance.properties import property_named
    from weightcheck.conformance.properties.base import LoaderRaised

    engine = engine or ENGINES["vllm"]
    os.environ["WEIGHTCHECK_POOL_RECYCLE"] = str(recycle)
    target = engine.pooled()
    adapter = resolve_loader_from(target, engine)
    prop = property_named("roundtrip")
    windows: list[dict[str, float]] = []
    failed = raised = 0
    start = window = time.perf_counter()
    for n, case in enumerate(soak_cases(examples, engine=engine), start=1):
        try:
            prop.run(adapter, case, {})
        except PropertyFailure as err:
            failed += 1
            raised += "loader raised" in str(err)
        except LoaderRaised:
            raised += 1
        if n % 100 == 0:
            world = target.pool.world(2)
            mem = memory_of(world)
            now = time.perf_counter()
            windows.append(
                {
                    "examples": n,
                    "ms_per_example": 1000 * (now - window) / 100,
                    "max_fds": mem["fds"],
                    "max_rss_mb": mem["rss_mb"],
                    "mean_pss_mb": mem["pss_mb"],
                    "generation": world.generation,
                    "runs_since_start": world.runs_since_start,
                }
            )
            window = now
    total = time.perf_counter() - start
    stats = target.pool.stats()
    target.close()
    os.environ.pop("WEIGHTCHECK_POOL_RECYCLE", None)
    return {"examples": examples, "failed": failed, "raised": raised, "total_s": total, "windows": windows,
            "recycles": stats.get(2, {}).get("recycles", 0)}


# --- report ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=sorted(ENGINES), default="vllm",
                        help="the adapter to benchmark (adapters/vllm_loader.py or adapters/sglang_loader.py)")
    parser.add_argument("--examples", type=int, default=40, help="examples per property, family and world size")
    parser.add_argument("--families", default="llama,qwen3_moe")
    parser.add_argument("--properties", default="roundtrip,all_ranks")
    parser.add_argument("--soak", type=int, default=1000, help="soak examples (0: no soak)")
    parser.add_argument("--soak-only", action="store_true", help="only the soak")
    parser.add_argument("--recycle", type=int, default=500, help="recycle after this many runs in the soak")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    engine = ENGINES[args.engine]

    results: dict[str, Any] = {
        "engine": engine.name,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}, "
        f"torch {torch.__version__}, {engine.version()}",
    }
    print(f"# {engine.title} through the rank pool\n\n{results['machine']}\n")

    if args.soak_only:
        args.families = ""
    pooled = engine.pooled()
    results["startup"] = startup(pooled, engine)
    s = results["startup"]
    print("## Start-up and memory\n")
    print(f"- first world (forkserver start, {engine.title} imported once): {s['first_world_s']:.1f} s")
    print("- worlds from the warm forkserver: " + ", ".join(
        f"{n} ranks {s[f'world_{n}_start_s']:.2f} s" for n in engine.startup_sizes))
    m = s["memory_world_4"]
    print(f"- per rank process (world of 4, after a build): RSS {m['rss_mb']:.0f} MB, "
          f"PSS {m['pss_mb']:.0f} MB, {m['fds']} fds\n")

    rows: list[Row] = []
    for family in filter(None, args.families.split(",")):
        for prop in args.properties.split(","):
            if engine.name == "vllm":
                inproc = engine.adapter().VllmLoader(single="inprocess")
                rows.append(run_property(OneWorldSize(inproc, 1), prop, family, args.examples,
                                         f"{prop}[{family}] 1 rank, in process"))
                inproc.close()
            else:  # SGLang's adapter runs tp 1 in this process, always (one runtime per process)
                rows.append(run_property(OneWorldSize(pooled, 1, engine, in_process=True), prop, family,
                                         args.examples, f"{prop}[{family}] 1 rank, in process"))
            for size in engine.pool_sizes:
                target = OneWorldSize(pooled, size, engine)
                rows.append(run_property(target, prop, family, args.examples,
                                         f"{prop}[{family}] {size} rank{'s' if size > 1 else ''}, pool"))
    print("## Throughput (per example, ms)\n")
    print("| property, world | examples (failed) | examples/s | harness | engine build | engine load | state | pool overhead |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.label} | {r.examples} ({r.failed}) | {r.rate:.1f} | {r.per_example_ms(r.harness_s):.0f} | "
              f"{r.per_example_ms(r.engine_build_s):.0f} | {r.per_example_ms(r.engine_load_s):.0f} | "
              f"{r.per_example_ms(r.engine_state_s):.1f} | {r.per_example_ms(r.pool_overhead_s):.0f} |")
    results["throughput"] = [vars(r) | {"examples_per_s": r.rate} for r in rows]

    results["recycling"] = recycling(pooled, 10, engine)
    rc = results["recycling"]
    print(f"\n## Recycling (world of 2)\n\nstop {rc['stop_s']:.2f} s, start {rc['start_s']:.2f} s, first example "
          f"{rc['first_example_s']:.2f} s vs warm {rc['warm_example_s']:.3f} s: "
          f"{rc['recycle_cost_s']:.2f} s per recycle")
    pooled.close()

    if args.soak:
        results["soak"] = soak(args.soak, args.recycle, engine)
        sk = results["soak"]
        print(f"\n## Soak: {sk['examples']} roundtrip[qwen3_moe] examples on worlds of 2 ranks "
              f"{'(tp 2) ' if engine.name == 'sglang' else ''}"
              f"({sk['failed']} failed on known findings, {sk['raised']} of them refused by {engine.title}), "
              f"{sk['total_s']:.0f} s, recycling every {args.recycle} runs: {sk['recycles']} recycles\n")
        print("| examples | ms/example | max fds | max RSS MB | mean PSS MB | generation | runs since start |")
        print("|---|---|---|---|---|---|---|")
        for w in sk["windows"]:
            print(f"| {w['examples']} | {w['ms_per_example']:.0f} | {w['max_fds']} | {w['max_rss_mb']:.0f} | "
                  f"{w['mean_pss_mb']:.0f} | {w['generation']} | {w['runs_since_start']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
