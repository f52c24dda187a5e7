"""A tensor the model has no place for is refused or reported, never silently ignored.

One extra tensor is added to the checkpoint, of a kind real checkpoints bring: a layer index at
or above ``num_layers``, an expert id at or above ``num_experts``, a scale next to an unquantised
module, a LoRA A/B tensor in a base checkpoint, a plausible misspelling of a real name, or a name
that only shares a prefix or a suffix with a skippable buffer (``rotary_emb.inv_freq``, GPT-2's
mask buffers: those stay skippable, exactly those).  The loader raises naming it (and loads the
well-formed checkpoint), or reports it in ``LoadReport.unexpected`` and loads everything else
exactly.
"""

from __future__ import annotations

import re

from hypothesis import strategies as st

from weightcheck.fixtures.adversarial import insert, seeded_tensor, write_files
from weightcheck.reference_models.families import checkpoint_specs

from ..assertions import fail
from .base import (
    LoaderRaised,
    Outcome,
    Property,
    context,
    control_loads,
    expected,
    load_written,
    mismatches,
    names_any,
    needed_tensors,
    tensors_of,
    tracking_problems,
)

KINDS = ("layer_beyond", "expert_beyond", "scale_unquantised", "lora_tensor", "misspelled", "near_buffer")
DESCRIBED = {
    "layer_beyond": "a layer the model does not have",
    "expert_beyond": "an expert the model does not have",
    "scale_unquantised": "a scale next to an unquantised module",
    "lora_tensor": "a LoRA tensor in a base checkpoint",
    "misspelled": "a misspelling of a real name",
    "near_buffer": "a name that only looks like a skippable buffer",
}
EMBEDDINGS = ("embed_tokens", ".wte.", ".wpe.", "lm_head")
_LAYER = re.compile(r"^(?P<head>(?:model\.layers|transformer\.h))\.0\.(?P<tail>.+)$")
_EXPERT = re.compile(r"^(?P<head>.+\.experts)\.0\.(?P<tail>.+)$")


def candidates(case) -> dict[str, list[tuple[str, tuple[int, ...], str]]]:
    """For each kind the case allows: (name, shape, dtype) of every extra tensor of that kind."""
    arch, fmt = case.arch, case.recipe.format
    specs = checkpoint_specs(arch, fmt)
    weights = {n: s for n, s in specs.items() if s.role == "weight"}
    dtype_of = {n: s.dtype or arch.dtype for n, s in specs.items()}
    out: dict[str, list] = {k: [] for k in KINDS}
    if arch.family != "deepseek_v32":  # its index-num_layers tensors are MTP layers, skipped by design
        for name, spec in weights.items():
            m = _LAYER.match(name)
            if m:
                for layer in (arch.num_layers, arch.num_layers + 1):
                    out["layer_beyond"].append((f"{m['head']}.{layer}.{m['tail']}", spec.shape, dtype_of[name]))
    if arch.moe is not None:
        for name, spec in weights.items():
            m = _EXPERT.match(name)
            if m:
                out["expert_beyond"].append((f"{m['head']}.{arch.moe.num_experts}.{m['tail']}", spec.shape, dtype_of[name]))
    linear = [
        n.removesuffix(".weight")
        for n, s in weights.items()
        if n.endswith(".weight") and len(s.shape) == 2 and not any(e in n for e in EMBEDDINGS)
    ]
    for module in linear:
        if not arch.fp8(module):
            out["scale_unquantised"] += [(f"{module}.weight_scale", (), "float32"), (f"{module}.input_scale", (), "float32")]
        rows, cols = weights[module + ".weight"].shape
        out["lora_tensor"] += [
            (f"{module}.lora_A.weight", (2, cols), arch.dtype),
            (f"{module}.lora_B.weight", (rows, 2), arch.dtype),
        ]
    for name, spec in list(weights.items())[:40]:
        for typo in misspellings(name):
            if typo not in specs:
                out["misspelled"].append((typo, spec.shape, dtype_of[name]))
    for name, spec in specs.items():
        if spec.role == "buffer":
            head, _, leaf = name.rpartition(".")
            parent = head.rpartition(".")[0]
            beside = f"{parent}.{leaf}" if head.endswith("rotary_emb") else f"{parent}.mlp.{leaf}"
            dtype = spec.dtype or arch.dtype
            out["near_buffer"] += [(f"{name}_scaled", spec.shape, dtype), (beside, spec.shape, dtype)]
    foreign = foreign_modules(case, specs)
    return {k: [c for c in v if module_of(c[0]) not in foreign] for k, v in out.items() if v}


def module_of(name: str) -> str:
    """A checkpoint name's top module: its decoder layer, else the module that holds it."""
    m = re.match(r"^((?:model\.layers|transformer\.h)\.\d+)\.", name)
    return m[1] if m else name.rpartition(".")[0]


def foreign_modules(case, specs) -> set[str]:
    """Top modules of the checkpoint this rank does not hold (another pipeline rank's layers,
    the embedding on a later rank, a tied ``lm_head``): a tensor under one of them may be
    skipped unread here, by vLLM's prefix test; the rank that holds the module judges it."""
    held = {module_of(n) for n in needed_tensors(case)}
    return {module_of(n) for n in specs} - held


def misspellings(name: str) -> list[str]:
    """Plausible typos of one segment of ``name``: two letters swapped, one dropped, a plural."""
    parts = name.split(".")
    out = []
    for i, part in enumerate(parts):
        if not part.isalpha() or len(part) < 4:
            continue
        swapped = part[:1] + part[2] + part[1] + part[3:]
        dropped = part[:-2] + part[-1]
        for typo in (swapped, dropped, part + "s"):
            if typo != part:
                out.append(".".join(parts[:i] + [typo] + parts[i + 1 :]))
    return out


class UnexpectedTensor(Property):
    name = "unexpected_tensor"
    label = "unexpected tensor"
    inputs = tuple(f"unexpected: {k}" for k in KINDS)

    def input_of(self, extras):
        return f"unexpected: {extras['kind']}" if extras.get("kind") else None

    def draw(self, data, case, caps):
        options = {k: v for k, v in candidates(case).items() if v}
        kind = data.draw(st.sampled_from(sorted(options)), label="kind of unexpected tensor")
        name, shape, dtype = data.draw(st.sampled_from(options[kind]), label="unexpected tensor")
        where = data.draw(st.tuples(st.integers(0, 7), st.integers(0, 10**6)), label="(file, position)")
        return case, {"kind": kind, "name": name, "shape": list(shape), "dtype": dtype, "at": list(where)}

    def replay_extras(self, case):
        """One unexpected tensor of each kind the case allows (the first of each)."""
        return [
            {"kind": kind, "name": name, "shape": list(shape), "dtype": dtype, "at": [0, 0]}
            for kind, options in sorted(candidates(case).items())
            if options
            for name, shape, dtype in options[:1]
        ]

    def run(self, loader, case, extras):
        extra, kind = extras["name"], extras["kind"]
        tensors = tensors_of(case)
        bad = {**tensors, extra: seeded_tensor(extra, extras["shape"], extras["dtype"], case.recipe.value_seed)}
        files = insert(case.recipe.files, extra, *extras["at"])
        where = context(case, f"unexpected tensor: {extra} ({DESCRIBED[kind]})")
        headline = f"unexpected tensor: {extra} ({DESCRIBED[kind]})"
        try:
            got = load_written(loader, case, lambda path: write_files(case, path, files, bad), tensors)
        except LoaderRaised as err:
            if err.stage != "load":
                fail(f"{headline}: loader.{err.stage} raised, so nothing was checked", [str(err)], where)
            if not names_any(err.exc, {extra}):
                fail(f"{headline}: load raised, but the error does not name it", [str(err)], where)
            control_loads(loader, case, f"{headline}: load raised naming it", err, where)
            return Outcome("raised")
        if extra not in got.unexpected:
            fail(
                f"{headline} was silently ignored",
                [
                    "load() neither raised naming it nor reported it (LoadReport.unexpected: "
                    f"{sorted(got.unexpected) or 'nothing'})"
                ],
                where,
            )
        exp = expected(case, tensors, loader)
        problems = mismatches(got.state, exp, case, tensors=tensors)
        if got.loaded is not None:
            problems += tracking_problems(got.loaded, set(exp.tracked))
        if problems:
            fail(f"{headline}: reported, but the rest was not loaded right", problems, where)
        return Outcome("reported")
