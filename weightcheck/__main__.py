"""``python -m weightcheck``: the suite's command line.

    python -m weightcheck layout --family llama --tp 2 --rank 1   # a rank's canonical layout
    python -m weightcheck layout --doc                            # docs/runtime-layout.md
    python -m weightcheck export CASE OUT_DIR                     # a case file as a checkpoint

Run the conformance suite itself with pytest: ``pytest --loader=MODULE[:ATTR]``.
"""

from __future__ import annotations

import argparse
import sys


def _layout(args: argparse.Namespace) -> int:
    from weightcheck.conformance.layout import document, example_arch, placement_for, render

    if args.doc:
        print(document())
        return 0
    if args.family is None:
        raise SystemExit("weightcheck layout: --family is required (or --doc)")
    try:
        arch = example_arch(args.family, args.tp, args.pp, args.ep, fp8=args.fp8, lora=args.lora, tied=args.tied)
        placement = placement_for(arch, args.tp, args.rank, args.pp, args.pp_rank, args.ep, args.ep_rank, args.expert_placement)
        print(render(arch, placement, args.format))
    except ValueError as exc:
        raise SystemExit(f"weightcheck layout: {exc}") from None
    return 0


def _export(args: argparse.Namespace) -> int:
    from weightcheck.conformance.casefiles import main

    return main([args.case_file, args.out_dir])


def main(argv: list[str] | None = None) -> int:
    from weightcheck.families import FAMILY_NAMES

    parser = argparse.ArgumentParser(prog="python -m weightcheck", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    layout = sub.add_parser("layout", help="print a small example's canonical runtime layout, from the oracle")
    layout.add_argument("--family", choices=FAMILY_NAMES)
    layout.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    layout.add_argument("--rank", type=int, default=0, help="tensor-parallel rank")
    layout.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
    layout.add_argument("--pp-rank", type=int, default=0)
    layout.add_argument("--ep", type=int, default=1, help="expert-parallel size (MoE families)")
    layout.add_argument("--ep-rank", type=int, default=0)
    layout.add_argument("--expert-placement", choices=("linear", "round_robin"), default="linear")
    layout.add_argument("--fp8", choices=("per-tensor", "block"), help="an FP8 checkpoint")
    layout.add_argument("--lora", action="store_true", help="LoRA-wrap every layer kind the family has")
    layout.add_argument("--tied", action="store_true", help="tied word embeddings")
    layout.add_argument("--format", help="checkpoint format (e.g. fused_experts for the MoE families)")
    layout.add_argument("--doc", action="store_true", help="print docs/runtime-layout.md instead")
    layout.set_defaults(run=_layout)
    export = sub.add_parser("export", help="write a case file as a plain checkpoint with reproduce.py")
    export.add_argument("case_file")
    export.add_argument("out_dir")
    export.set_defaults(run=_export)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
