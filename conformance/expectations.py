"""``--expect-fail FILE``: known failures of a loader, each with a reason.

One entry a line, ``ID: reason``; ``#`` starts a comment.  IDs are stable across releases
(they never contain file paths):

- ``PROPERTY`` (e.g. ``tracking``): that property for every family;
- ``PROPERTY[FAMILY]`` (e.g. ``roundtrip[gpt2]``);
- ``regression[CASE]`` or ``regression[CASE]/PROPERTY``: a regression case (file stem).

A listed test that fails is reported as xfailed with the reason; one that passes fails the
run (strict xpass), so a fixed bug is noticed and its entry removed.  An entry that names no
known property, family or regression case is a usage error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ENTRY = re.compile(r"^(?P<id>[^\s:#]+)\s*:\s*(?P<reason>\S.*)$")


@dataclass(frozen=True)
class Expectation:
    id: str
    reason: str
    line: int


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
                f"--expect-fail {path}:{number}: expected 'ID: reason', got {raw.strip()!r}"
            )
        out.append(Expectation(match["id"], match["reason"].strip(), number))
    return out


def item_ids(prop: str | None, family: str | None, regression: str | None) -> set[str]:
    """The IDs that select one test item."""
    if regression is not None:
        return {f"regression[{regression}]", f"regression[{regression}]/{prop}"}
    return {prop, f"{prop}[{family}]"} if prop else set()


def validate(
    entries: list[Expectation], properties: tuple[str, ...], families: tuple[str, ...], regressions: set[str]
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
