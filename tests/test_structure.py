"""The package's structure, read from the code itself: one import namespace, imports that point
down the pipeline, the oracle and the reference loader apart, and one family registry that the
docs and the capabilities agree with.

Imports are read with ``ast`` from every file (function-level imports included: a lazy import
is still an import), so the checks see what a reader of the code sees.
"""

from __future__ import annotations

import ast
import re
import tomllib
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OLD_TOP_LEVEL = ("conformance", "fixtures", "strategies", "reference_models", "adapters")

BOTTOM = ("weightcheck", "weightcheck.arch", "weightcheck.capabilities", "weightcheck.checkpoint", "weightcheck.families")
ORACLE = ("weightcheck.reference_models.families", "weightcheck.reference_models.oracle")
REFERENCE_LOADER = ("weightcheck.reference_models.reference_loader",)
# The pipeline, bottom up: a module may import its own layer and the layers below it.
LAYERS = (
    BOTTOM,
    ORACLE + REFERENCE_LOADER,  # two independent statements of the layout; checked apart below
    ("weightcheck.fixtures",),  # cases and checkpoints on disk
    ("weightcheck.strategies",),  # drawing cases
    ("weightcheck.conformance",),  # running loaders and comparing with the oracle
    ("weightcheck.reference_models.mutants", "weightcheck.adapters"),  # loaders under test
    ("weightcheck.__main__",),  # the command line
)


def _package_dirs() -> dict[str, Path]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: ROOT / path for name, path in config["package-dir"].items()}


@lru_cache(maxsize=None)
def package_modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name, from pyproject's package-dir."""
    out = {}
    for package, folder in _package_dirs().items():
        for file in folder.rglob("*.py"):
            rel = file.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            # a nested mapped package (weightcheck.conformance) wins over its parent's folder
            out.setdefault(name, file)
    return out


def imported(file: Path, module: str) -> set[str]:
    """Absolute names of everything ``file`` (module ``module``) imports, anywhere in it."""
    tree = ast.parse(file.read_text())
    is_package = file.name == "__init__.py"
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


@lru_cache(maxsize=None)
def graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports directly."""
    modules = package_modules()
    return {
        name: {m for m in imported(file, name) if m in modules and m != name}
        for name, file in modules.items()
    }


def reaches(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph()[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def within(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer_of(module: str) -> int:
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if within(module, (prefix,)) and (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
    assert best is not None, f"{module} belongs to no layer of LAYERS"
    return best[0]


def all_python_files() -> list[Path]:
    skip = {".git", "build", "dist"}
    return [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]


def test_every_package_folder_is_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {name for name, file in package_modules().items() if file.name == "__init__.py"}
    assert listed == found


def test_no_file_imports_the_old_top_level_names():
    offenders = [
        str(p.relative_to(ROOT))
        for p in all_python_files()
        if any(n.split(".")[0] in OLD_TOP_LEVEL for n in imported(p, "__main__"))
    ]
    assert not offenders, f"import the package as weightcheck.*: {offenders}"


def test_nothing_imports_the_tests():
    offenders = []
    for file in all_python_files():
        if "tests" in file.relative_to(ROOT).parts:
            continue
        names = imported(file, "__main__")
        if any(n == "tests" or n.startswith("tests.") for n in names):
            offenders.append(str(file.relative_to(ROOT)))
    assert not offenders


def test_the_bottom_layer_imports_nothing_else_of_the_suite():
    for module in BOTTOM:
        assert graph()[module] <= set(BOTTOM), (module, graph()[module] - set(BOTTOM))


def test_the_oracle_and_the_reference_loader_never_import_each_other():
    for name in graph():
        if within(name, ORACLE):
            bad = {m for m in reaches(name) if within(m, REFERENCE_LOADER)}
            assert not bad, f"{name} reaches the reference loader: {sorted(bad)}"
        if within(name, REFERENCE_LOADER):
            bad = {m for m in reaches(name) if within(m, ORACLE)}
            assert not bad, f"{name} reaches the oracle: {sorted(bad)}"


def test_the_reference_loader_imports_only_the_bottom_layer():
    for name in graph():
        if within(name, REFERENCE_LOADER):
            bad = {m for m in graph()[name] if not within(m, REFERENCE_LOADER) and m not in BOTTOM}
            assert not bad, (name, sorted(bad))


def test_imports_point_down_the_pipeline():
    upward = [
        (name, target)
        for name, targets in graph().items()
        for target in targets
        if layer_of(target) > layer_of(name)
    ]
    assert not upward, f"(module, what it imports from a layer above): {upward}"


def test_the_import_graph_sees_what_it_checks():
    """The checks above mean something: the graph finds the known edges."""
    assert "weightcheck.reference_models.families" in graph()["weightcheck.reference_models.oracle.expected"]
    assert "weightcheck.arch" in graph()["weightcheck.reference_models.reference_loader.llama"]
    assert layer_of("weightcheck.conformance.plugin") > layer_of("weightcheck.strategies.cases")


# --- one family registry -------------------------------------------------------------------


def documented_families() -> list[str]:
    """The families docs/runtime-layout.md lists under its "Families" heading."""
    text = (ROOT / "docs" / "runtime-layout.md").read_text()
    section = text.split("\n## Families", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", section, re.M)


def test_registry_docs_and_capabilities_agree():
    from weightcheck import Capabilities
    from weightcheck.families import FAMILIES, FAMILY_NAMES

    assert sorted(documented_families()) == sorted(FAMILY_NAMES)
    assert Capabilities().families == set(FAMILIES)
    with pytest.raises(ValueError, match="unknown families"):
        Capabilities(families={"mixtral"})


@pytest.mark.parametrize("name", sorted(__import__("weightcheck.families", fromlist=["x"]).FAMILIES))
def test_each_family_entry_names_a_spec_a_strategy_and_a_reference_model(name):
    from hypothesis import strategies as st

    from weightcheck.families import FAMILIES, resolve
    from weightcheck.reference_models.families import FamilySpec

    entry = FAMILIES[name]
    spec = resolve(entry.spec)
    assert isinstance(spec, FamilySpec) and spec.model_type == name
    assert isinstance(resolve(entry.archs)(), st.SearchStrategy)
    assert isinstance(resolve(entry.reference_model), type)
    assert set(entry.lora_targets) <= set(__import__("weightcheck.arch", fromlist=["x"]).LORA_TARGETS)
