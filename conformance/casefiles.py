"""Case files: a failing example written down, replayed, and exported as a plain checkpoint.

A case file is JSON with a versioned ``schema``; it holds the example (arch, placement,
checkpoint recipe and value seed, the property and what it drew: dropped tensor, second layout,
second seed) and, for a failure, the test and the first line of the message.  The same format
is the regression corpus (``fixtures/regressions/``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .runner import Example

SCHEMA = "weightcheck.case/1"


def write_case_file(out_dir: Path, example: Example, **meta: Any) -> Path:
    body = {"schema": SCHEMA, **example.to_dict(), **meta}
    text = json.dumps(body, indent=2, sort_keys=True)
    digest = hashlib.sha1(json.dumps(example.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    path = Path(out_dir) / "cases" / f"{example.property}-{example.case.arch.family}-{digest}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return path


class CaseFileError(ValueError):
    pass


def read_case_file(path: str | Path) -> tuple[Example, dict[str, Any]]:
    path = Path(path)
    try:
        body = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CaseFileError(f"cannot read case file {path}: {exc}") from None
    if body.get("schema") != SCHEMA:
        raise CaseFileError(f"{path}: schema {body.get('schema')!r}, expected {SCHEMA!r}")
    try:
        return Example.from_dict(body), body
    except (KeyError, TypeError, ValueError) as exc:
        raise CaseFileError(f"{path}: not a valid case: {exc}") from None


REPRODUCE = '''\
"""Reproduce weightcheck case {name} without Hypothesis.

    python reproduce.py --loader mypkg.loader

Builds the model for the placement below with your loader, loads ./checkpoint, and compares
state(model) with expected_state.safetensors (what this rank must hold, from the oracle).
Exits 1 when anything differs (usable with `git bisect run`), 0 when all matches.  For a case
with a dropped tensor, the parameters that need it (``dependents`` in case.json) must either
make ``load`` raise naming one of them, or be left out of the loaded set.
Case: {short}
Property that failed: {prop}{detail}
"""

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from weightcheck import Arch, Checkpoint, Placement

HERE = Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--loader", required=True, help="MODULE[:ATTR] of your loader")
    args = parser.parse_args()
    module, _, attr = args.loader.partition(":")
    mod = importlib.import_module(module)
    loader = getattr(mod, attr) if attr else getattr(mod, "loader", mod)
    body = json.loads((HERE / "case.json").read_text())
    case, dependents = body["case"], set(body.get("dependents", ()))
    arch, placement = Arch.from_dict(case["arch"]), Placement.from_dict(case["placement"])
    model = loader.build(arch, placement)
    try:
        loaded = loader.load(model, Checkpoint.open(HERE / "checkpoint"))
        loaded = getattr(loaded, "loaded", loaded)  # a weightcheck.LoadReport
    except Exception as exc:
        named = dependents | {{body.get("extras", {{}}).get("dropped")}}
        if dependents and any(n and n in f"{{exc}}" for n in named):
            print(f"load raised, naming what is missing: {{type(exc).__name__}}: {{exc}}")
            print("OK")
            return 0
        print(f"RAISED   {{type(exc).__name__}}: {{exc}}")
        return 1
    state = loader.state(model) if hasattr(loader, "state") else dict(model.named_parameters())
    expected = load_file(str(HERE / "expected_state.safetensors"))
    bad = 0
    for name, want in expected.items():
        if name in dependents:
            continue  # never initialised: the checkpoint lacks what it needs
        got = state.get(name)
        if got is None:
            print(f"MISSING  {{name}}")
        elif got.shape != want.shape or got.dtype != want.dtype:
            print(f"SHAPE    {{name}}: {{tuple(got.shape)}} {{got.dtype}}, expected {{tuple(want.shape)}} {{want.dtype}}")
        elif not torch.equal(got.detach().cpu(), want):
            print(f"VALUES   {{name}}: {{int((got.detach().cpu() != want).sum())}} elements differ")
        else:
            continue
        bad += 1
    for name in sorted(set(state) - set(expected)):
        print(f"EXTRA    {{name}}")
        bad += 1
    if loaded is None:
        print("loaded set: none (no tracking)")
        if dependents:
            print(f"UNNOTICED {{sorted(dependents)}} were not initialised and nothing says so")
            bad += 1
    elif set(loaded) != set(expected) - dependents:
        print(f"LOADED   set differs: {{sorted((set(expected) - dependents) ^ set(loaded))}}")
        bad += 1
    else:
        print("loaded set: exact")
    print("OK" if not bad else f"{{bad}} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
'''


def export_case(case_file: str | Path, out_dir: str | Path) -> Path:
    """Write the case as ``checkpoint/`` (HF layout), its expected state and ``reproduce.py``.

    For a missing-tensor case the checkpoint lacks the dropped tensor, as the loader saw it.
    """
    from safetensors.torch import save_file

    from weightcheck.fixtures.materialize import case_tensors, write_case
    from weightcheck.reference_models.oracle import expected_state

    example, body = read_case_file(case_file)
    case, out = example.case, Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipe = case.recipe
    dropped = example.extras.get("dropped")
    if example.property == "missing_tensor" and dropped:
        recipe = recipe.without(dropped)
    tensors = case_tensors(case)
    write_case(case, out / "checkpoint", recipe, tensors)
    expected = expected_state(case.arch, case.placement, tensors, recipe.format)
    save_file({n: p.value.contiguous() for n, p in expected.params.items()}, str(out / "expected_state.safetensors"))
    if example.property == "missing_tensor" and dropped:
        body = {**body, "dependents": sorted(expected.dependents(dropped))}
    (out / "case.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    detail = f"\nDropped tensor: {dropped}" if dropped else ""
    (out / "reproduce.py").write_text(
        REPRODUCE.format(name=Path(case_file).stem, short=case.short(), prop=example.property, detail=detail)
    )
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m weightcheck export",
        description="Export a weightcheck case file as a plain checkpoint directory with a script.",
    )
    parser.add_argument("case_file")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    try:
        out = export_case(args.case_file, args.out_dir)
    except CaseFileError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {out}/checkpoint, expected_state.safetensors, case.json, reproduce.py")
    print(f"run: python {out}/reproduce.py --loader=MODULE[:ATTR]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
