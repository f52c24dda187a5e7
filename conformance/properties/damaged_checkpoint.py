"""A damaged checkpoint is refused with an exception; a stale shard the index does not name is
ignored; and the checkpoint directory never changes.

Kinds: a safetensors file cut short; a header length that lies; a tensor's data offsets that lie;
an index naming a shard that is missing (these must make ``load`` raise, while the well-formed
checkpoint loads: nothing half-loaded may be reported as loaded); and a stale shard left over from
an earlier save (another shard count, some of the same names with other values), which the index
does not name: the checkpoint is valid and loads exactly, so loaders that glob ``*.safetensors``
instead of reading the index are caught.  A loader that crashes the interpreter takes the test
process with it: run with ``-n`` to have that reported as the test's failure.
"""

from __future__ import annotations

from hypothesis import strategies as st

from weightcheck.checkpoint import INDEX_FILE
from weightcheck.fixtures.adversarial import (
    lie_data_offsets,
    lie_header_length,
    seeded_tensor,
    shard_names,
    truncate,
)
from weightcheck.fixtures.checkpoint import write_safetensors

from ..assertions import fail
from ..timing import section
from .base import (
    LoaderRaised,
    Outcome,
    Property,
    call,
    context,
    control_loads,
    expected,
    mismatches,
    raised_title,
    scratch,
    tensors_of,
    tracking_problems,
    write,
)

DAMAGE = ("truncated", "header_length", "data_offsets", "missing_shard")
KINDS = DAMAGE + ("stale_shard",)
DESCRIBED = {
    "truncated": "a safetensors file cut short",
    "header_length": "a header length that lies",
    "data_offsets": "a tensor's data offsets that lie",
    "missing_shard": "the index names a shard that is missing",
    "stale_shard": "a stale shard the index does not name",
}


def kinds(case) -> tuple[str, ...]:
    return KINDS if len(case.recipe.files) > 1 else DAMAGE[:3]


def digest(path):
    from weightcheck.fixtures.materialize import directory_digest

    with section("digest"):
        return directory_digest(path)


class DamagedCheckpoint(Property):
    name = "damaged_checkpoint"
    label = "damaged checkpoint"
    checks_values = False  # values only for a stale shard; the damage kinds check refusals
    inputs = tuple(f"damaged: {k}" for k in KINDS)

    def input_of(self, extras):
        return f"damaged: {extras['kind']}" if extras.get("kind") else None

    def draw(self, data, case, caps):
        kind = data.draw(st.sampled_from(kinds(case)), label="kind of damage")
        detail = data.draw(
            st.fixed_dictionaries(
                {"file": st.integers(0, 7), "amount": st.integers(1, 64), "fraction": st.floats(0.01, 1.0)}
            ),
            label="where and how much",
        )
        return case, {"kind": kind, **detail}

    def replay_extras(self, case):
        return [{"kind": k, "file": 0, "amount": 8, "fraction": 0.5} for k in kinds(case)]

    def run(self, loader, case, extras):
        kind = extras["kind"]
        headline = f"damaged checkpoint: {DESCRIBED[kind]}"
        with scratch() as path:
            tensors = tensors_of(case)
            checkpoint = write(case, path, tensors=tensors)
            detail = damage(case, path, tensors, extras)
            where = context(case, f"{DESCRIBED[kind]}: {detail}")
            before = digest(path)
            try:
                model = call("build", loader.build, case.arch, case.placement)
                report = call("load", loader.load, model, checkpoint)
                state = call("state", loader.state, model) if kind == "stale_shard" else None
            except LoaderRaised as err:
                self._unchanged(path, before, headline, where)
                if err.stage != "load":
                    fail(raised_title(headline), [str(err)], where)
                if kind == "stale_shard":
                    fail(
                        f"{headline}: the valid checkpoint was refused because of a file its index does not name",
                        [str(err)],
                        where,
                    )
                control_loads(loader, case, f"{headline}: load raised", err, where)
                return Outcome("raised")
            self._unchanged(path, before, headline, where)
        if kind != "stale_shard":
            reported = sorted(report.loaded) if report.loaded is not None else "nothing (no tracking)"
            fail(
                f"{headline}: loaded without an error",
                [f"load() returned normally; reported loaded: {reported}"],
                where,
            )
        exp = expected(case, tensors, loader)
        problems = mismatches(state, exp, case, tensors={**tensors, **_stale_values(case, tensors)})
        if report.loaded is not None:
            problems += tracking_problems(set(report.loaded), set(exp.tracked))
        if problems:
            if any("(of the STALE shard)" in p for p in problems):
                fail(f"{headline}: it was read (the index does not name it)", problems, where)
            fail(
                f"{headline}: the state is wrong, though no value of the stale shard is in it "
                "(a loading bug of its own: see the regions)",
                problems,
                where,
            )
        return Outcome("stale shard ignored")

    @staticmethod
    def _unchanged(path, before, headline, where) -> None:
        after = digest(path)
        changed = sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n))
        if changed:
            fail(f"{headline}: loading changed the checkpoint directory", [f"changed: {changed}"], where)


def _stale_values(case, tensors) -> dict:
    """The stale shard's values, named so a message says where a wrong value came from."""
    return {f"{n} (of the STALE shard)": t for n, t in _stale_tensors(case, tensors).items()}


def _stale_tensors(case, tensors) -> dict:
    names = case.recipe.files[0][: max(1, len(case.recipe.files[0]) // 2)]
    return {
        n: seeded_tensor(n + "#stale", tuple(tensors[n].shape), str(tensors[n].dtype).removeprefix("torch."), case.recipe.value_seed)
        for n in names
    }


def damage(case, path, tensors, extras) -> str:
    """Apply the drawn damage to the written checkpoint at ``path``; say what was done."""
    kind = extras["kind"]
    shards = shard_names(path)
    file = shards[extras["file"] % len(shards)]
    if kind == "truncated":
        truncate(file, extras["fraction"])
        return f"{file.name} cut short"
    if kind == "header_length":
        delta = extras["amount"] * (1 if extras["amount"] % 2 else -1)
        lie_header_length(file, delta)
        return f"{file.name}'s header length off by {delta}"
    if kind == "data_offsets":
        name = lie_data_offsets(file, extras["amount"], extras["amount"])
        return f"{file.name}: {name}'s end offset moved by {extras['amount']} bytes"
    if kind == "missing_shard":
        file.unlink()
        return f"{file.name} removed (the index still names it)"
    stale = path / f"model-00001-of-{len(shards) + 1:05d}.safetensors"
    write_safetensors(stale, list(_stale_tensors(case, tensors).items()))
    assert (path / INDEX_FILE).exists()
    return f"{stale.name} written beside the shards, with {len(_stale_tensors(case, tensors))} of their names"
