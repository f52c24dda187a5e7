"""``--expect-fail FILE``: known failures of a loader, each with a reason.

One entry a line, ``ID: reason``; ``#`` starts a comment.  IDs are stable across releases
(they never contain file paths):

- ``PROPERTY`` (e.g. ``tracking``): that property for every family;
- ``PROPERTY[FAMILY]`` (e.g. ``roundtrip[gpt2]``);
- ``regression[CASE]`` or ``regression[CASE]/PROPERTY``: a regression case (file stem).

A listed test that fails is reported as xfailed with the reason; one that passes fails the
run (strict xpass), so a fixed bug is noticed and its entry removed.  An entry that names no
known property, family or regression case is a usage error.

``ID when FEATURE|FEATURE: reason`` (a property or property[family] ID) narrows an entry to the
examples that use one of the features (names of the conformance matrix, such as
``tied_embeddings`` or ``pipeline_parallel``; ``!tied_embeddings``: an example that does not use
it): only a failure of such an example is expected; any other example that fails fails the
test, as without the entry.  A bug bound to a feature then hides nothing in the examples
without it: a new tensor-parallel bug in a family whose tied LM head is known broken still
fails the run on an untied example.  A narrowed entry is not strict (whether an example
reaches the bug depends on the draw: a tied LM head on a pp rank without it passes); the
finding's regression case, whose entry is strict, notices the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ENTRY = re.compile(r"^(?P<id>[^\s:#]+)(?:\s+when\s+(?P<when>[\w|!]+))?\s*:\s*(?P<reason>\S.*)$")


@dataclass(frozen=True)
class Expectation:
    id: str
    reason: str
    line: int
    when: tuple[str, ...] = ()  # features: only examples using one of them are expected to fail

    @property
    def label(self) -> str:
        return f"{self.id} when {'|'.join(self.when)}" if self.when else self.id

    def covers(self, features: dict) -> bool:
        """Whether an example with these features (``Case.features()``) is expected to fail."""
        return not self.when or any(
            not features.get(name[1:]) if name.startswith("!") else bool(features.get(name)) for name in self.when
        )


class ExpectationsError(ValueError):
    pass


def parse(path: str | Path) -> list[Expectation]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ExpectationsError(f"--expect-fail: cannot read {path}: {exc}") from None
    out = []
    for number, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not text:
            continue
        match = ENTRY.match(text)
        if not match:
            raise ExpectationsError(
                f"--expect-fail {path}:{number}: expected 'ID: reason' or 'ID when FEATURE|...: "
                f"reason', got {raw.strip()!r}"
            )
        when = tuple(match["when"].split("|")) if match["when"] else ()
        out.append(Expectation(match["id"], match["reason"].strip(), number, when))
    return out


def item_ids(prop: str | None, family: str | None, regression: str | None) -> set[str]:
    """The IDs that select one test item."""
    if regression is not None:
        return {f"regression[{regression}]", f"regression[{regression}]/{prop}"}
    return {prop, f"{prop}[{family}]"} if prop else set()


def validate(
    entries: list[Expectation],
    properties: tuple[str, ...],
    families: tuple[str, ...],
    regressions: set[str],
    features: tuple[str, ...] = (),
) -> None:
    known = set(properties) | {f"{p}[{f}]" for p in properties for f in families}
    known |= {f"regression[{r}]" for r in regressions}
    known |= {f"regression[{r}]/{p}" for r in regressions for p in properties}
    unknown = [e for e in entries if e.id not in known]
    if unknown:
        listed = ", ".join(f"{e.id!r} (line {e.line})" for e in unknown)
        raise ExpectationsError(
            f"--expect-fail entries match no test: {listed}; IDs are PROPERTY, PROPERTY[FAMILY] "
            f"or regression[CASE][/PROPERTY] with properties {list(properties)} and families "
            f"{list(families)}"
        )
    narrowed = [e for e in entries if e.when]
    wrong = [e for e in narrowed if e.id.startswith("regression[")]
    if wrong:
        raise ExpectationsError(
            f"--expect-fail: 'when' narrows property tests, not regression cases (one case, one "
            f"example): {', '.join(f'{e.id!r} (line {e.line})' for e in wrong)}"
        )
    unknown_features = sorted({f.removeprefix("!") for e in narrowed for f in e.when} - set(features))
    if unknown_features:
        raise ExpectationsError(
            f"--expect-fail: 'when' names no feature of the matrix: {unknown_features}; features are "
            f"{list(features)}"
        )
