"""The same parameter twice, or an index that lies: refused or reported, never a silent pick.

Kinds: one weight stored both with and without the model's prefix (``model.`` / GPT-2's
``transformer.``, which old checkpoints leave out), other values in each; an MoE layer's experts
in both the per-expert and the fused 3-D form; one key in two shards of a sharded checkpoint
(the index names one of them); the index mapping a key to a file that does not hold it.  The
loader raises naming one of the names involved (and loads the well-formed checkpoint), or
reports the extra copy in ``LoadReport.unexpected`` and loads the rest exactly.
"""

from __future__ import annotations

from hypothesis import strategies as st

from weightcheck.fixtures.adversarial import index_map, insert, rewrite_index, seeded_tensor, write_files
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

KINDS = ("prefix_alias", "expert_forms", "two_shards", "index_wrong_file")
DESCRIBED = {
    "prefix_alias": "stored twice, with and without the model's prefix",
    "expert_forms": "experts stored both per expert and fused",
    "two_shards": "one key stored in two shards",
    "index_wrong_file": "the index maps a key to a file that does not hold it",
}
PREFIXES = ("model.", "transformer.")


def candidates(case) -> dict[str, list[str]]:
    """Per kind the case allows, the checkpoint names it can duplicate or misplace."""
    needed = needed_tensors(case)
    specs = checkpoint_specs(case.arch, case.recipe.format)
    out: dict[str, list[str]] = {}
    aliased = [n for n in needed if n.startswith(PREFIXES) and specs[n].role == "weight"]
    if aliased:
        out["prefix_alias"] = aliased
    if case.arch.moe is not None and set(_formats(case)) == {"per_expert", "fused_experts"}:
        layers = sorted({n.split(".mlp.experts.")[0] for n in needed if ".mlp.experts." in n})
        if layers:
            out["expert_forms"] = layers
    if len(case.recipe.files) > 1:
        out["two_shards"] = [n for n in needed if n in case.recipe.names]
        out["index_wrong_file"] = [n for n in needed if n in case.recipe.names]
    return {k: v for k, v in out.items() if v}


def _other_form(case, layer: str) -> dict[str, tuple]:
    """The layer's experts in the checkpoint format the case does not use: name -> shape."""
    fmt = "fused_experts" if case.recipe.format == "per_expert" else "per_expert"
    specs = checkpoint_specs(case.arch, fmt) if fmt in _formats(case) else {}
    return {n: s.shape for n, s in specs.items() if n.startswith(layer + ".mlp.experts.") and s.role == "weight"}


def _formats(case) -> tuple[str, ...]:
    from weightcheck.reference_models.families import family_spec

    return family_spec(case.arch.family).formats(case.arch)


class DuplicateTensor(Property):
    name = "duplicate_tensor"
    label = "duplicate tensor"
    inputs = tuple(f"duplicate: {k}" for k in KINDS)

    def input_of(self, extras):
        return f"duplicate: {extras['kind']}" if extras.get("kind") else None

    def draw(self, data, case, caps):
        options = candidates(case)
        if not options:
            return case, {}
        kind = data.draw(st.sampled_from(sorted(options)), label="kind of duplication")
        name = data.draw(st.sampled_from(options[kind]), label="tensor (or layer) duplicated")
        where = data.draw(st.tuples(st.integers(0, 7), st.integers(0, 10**6)), label="(file, position)")
        return case, {"kind": kind, "name": name, "at": list(where)}

    def replay_extras(self, case):
        return [{"kind": k, "name": names[0], "at": [1, 0]} for k, names in sorted(candidates(case).items())]

    def not_applicable(self, case):
        return None if candidates(case) else "nothing in this case can be duplicated"

    def run(self, loader, case, extras):
        if not extras:
            return Outcome("nothing to duplicate", exercised=False)
        kind, name = extras["kind"], extras["name"]
        seed = case.recipe.value_seed
        tensors = tensors_of(case)
        files = case.recipe.files
        bad = dict(tensors)
        involved = {name}
        index_edit = None
        if kind == "prefix_alias":
            alias = name.split(".", 1)[1]
            bad[alias] = seeded_tensor(alias, tuple(tensors[name].shape), _dtype(tensors[name]), seed)
            files = insert(files, alias, *extras["at"])
            involved.add(alias)
        elif kind == "expert_forms":
            for other, shape in _other_form(case, name).items():
                bad[other] = seeded_tensor(other, shape, case.arch.dtype, seed)
                files = insert(files, other, *extras["at"])
                involved.add(other)
            involved |= {n for n in case.recipe.names if n.startswith(name + ".mlp.experts.")}
        elif kind == "two_shards":
            holder = next(i for i, f in enumerate(files) if name in f)
            other = (holder + 1 + extras["at"][0] % (len(files) - 1)) % len(files)
            files = tuple(tuple(f) + ((name,) if i == other else ()) for i, f in enumerate(files))
            index_edit = (name, holder)  # the index keeps naming the first copy's file
            copy_file = other
        else:  # index_wrong_file
            holder = next(i for i, f in enumerate(files) if name in f)
            index_edit = (name, (holder + 1 + extras["at"][0] % (len(files) - 1)) % len(files))

        def writer(path):
            if kind == "two_shards":  # the second copy gets values of its own
                seeded = seeded_tensor(name + "#2", tuple(tensors[name].shape), _dtype(tensors[name]), seed)
                checkpoint = _write_twice(case, path, files, bad, name, seeded, copy_file)
            else:
                checkpoint = write_files(case, path, files, bad)
            if index_edit is not None:
                weight_map = index_map(path)
                shards = sorted(set(weight_map.values()))
                weight_map[index_edit[0]] = shards[index_edit[1]]
                rewrite_index(path, weight_map)
            return checkpoint

        headline = f"duplicate tensor: {name} ({DESCRIBED[kind]})"
        where = context(case, f"{DESCRIBED[kind]}: {name}")
        try:
            got = load_written(loader, case, writer, tensors)
        except LoaderRaised as err:
            if err.stage != "load":
                fail(f"{headline}: loader.{err.stage} raised, so nothing was checked", [str(err)], where)
            if not names_any(err.exc, involved):
                fail(f"{headline}: load raised, but names none of {sorted(involved)}", [str(err)], where)
            control_loads(loader, case, f"{headline}: load raised naming it", err, where)
            return Outcome("raised")
        if not got.unexpected & involved:
            fail(
                f"{headline}: loaded without a word",
                [f"load() neither raised naming any of {sorted(involved)} nor reported one as unexpected"],
                where,
            )
        exp = expected(case, tensors, loader)
        problems = mismatches(got.state, exp, case, only=set(exp.params) - exp.dependents(name), tensors=tensors)
        if got.loaded is not None:
            problems += tracking_problems(got.loaded - exp.dependents(name), set(exp.tracked - exp.dependents(name)))
        if problems:
            fail(f"{headline}: reported, but the rest was not loaded right", problems, where)
        return Outcome("reported")


def _dtype(tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _write_twice(case, path, files, tensors, name, second, copy_file: int):
    """Write ``files``, then give the copy of ``name`` in file ``copy_file`` other values."""
    from weightcheck.fixtures.checkpoint import write_safetensors

    checkpoint = write_files(case, path, files, tensors)
    shard = sorted(path.glob("*.safetensors"))[copy_file]
    write_safetensors(shard, [(n, second if n == name else tensors[n]) for n in files[copy_file]])
    return checkpoint
