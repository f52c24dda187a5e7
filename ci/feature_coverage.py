"""How often each feature, and each pair of features, occurs among generated cases.

Draws cases exactly as the conformance tests do, per family, for the number of examples of a
profile, and prints the share of examples with each feature and each pair.  "passed" is only
worth something if the combination was generated: this is how we know.

    python ci/feature_coverage.py [--examples 50] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
from collections import Counter

from hypothesis import Phase, given, seed, settings

from weightcheck.families import FAMILY_NAMES
from weightcheck.strategies import cases
from weightcheck.conformance.profiles import CASE_HEALTH_CHECKS

FEATURES = (
    "tensor_parallel",
    "pipeline_parallel",
    "expert_parallel",
    "moe",
    "lora",
    "tied_embeddings",
    "sharded_checkpoint",
    "fused_expert_checkpoint",
    "fp8_per_tensor",
    "fp8_block",
)


def collect(family: str, examples: int, run_seed: int) -> list[dict]:
    seen: list[dict] = []

    @seed(run_seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=CASE_HEALTH_CHECKS,
    )
    @given(case=cases(family))
    def draw(case):
        seen.append(case.features())

    draw()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=50, help="examples per family (dev: 50)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = [f for family in FAMILY_NAMES for f in collect(family, args.examples, args.seed)]
    total = len(rows)
    single = Counter(k for r in rows for k in FEATURES if r[k])
    pairs = Counter(
        (a, b) for r in rows for a, b in itertools.combinations(FEATURES, 2) if r[a] and r[b]
    )
    all_five = sum(
        r["lora"] and r["moe"] and r["pipeline_parallel"] and r["tensor_parallel"] and r["tied_embeddings"]
        for r in rows
    )
    print(f"{total} cases ({args.examples} per family, families {', '.join(FAMILY_NAMES)})\n")
    print("| feature | share |\n|---|---|")
    for name in FEATURES:
        print(f"| {name} | {single[name] / total:.0%} |")
    print("\n| pair | " + " | ".join(FEATURES[1:]) + " |")
    print("|---|" + "---|" * (len(FEATURES) - 1))
    for i, a in enumerate(FEATURES[:-1]):
        cells = ["" if j <= i else f"{pairs[(a, b)] / total:.0%}" for j, b in enumerate(FEATURES) if j > 0]
        print(f"| {a} | " + " | ".join(cells) + " |")
    print(f"\nLoRA + MoE + PP + TP + tied in one example: {all_five} of {total}")


if __name__ == "__main__":
    main()
