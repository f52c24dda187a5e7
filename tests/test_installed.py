"""weightcheck as a user installs it: a wheel, in a fresh environment, next to other packages.

The wheel must install exactly one import name, ``weightcheck``: an environment that already
has PyPI's ``fixtures`` (testtools' fixtures) keeps it working, before and after uninstalling
weightcheck, and an engine repository with its own top-level ``fixtures/`` package and a
``tests/strategies.py`` imports its own code while the suite runs in the same pytest process.

One fresh virtual environment for the module (about 45 s: torch 2.13.0 comes from the local
wheel the machine has); skipped where no such torch can be installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "weightcheck.reference_models.reference_loader"
TORCH = "torch==2.13.0"  # the CPU build this project's machines have; an unpinned torch is CUDA


def run(cmd, cwd=None, env=None, check=True, timeout=900) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the source (setuptools leaves build/ where it builds)."""
    source = tmp_path_factory.mktemp("source") / "weightcheck"
    junk = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", "weightcheck-results")
    shutil.copytree(ROOT, source, ignore=junk)
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, source])
    (found,) = out.glob("weightcheck-*.whl")
    return found


@pytest.fixture(scope="module")
def env(tmp_path_factory, wheel) -> dict:
    """A fresh environment with PyPI's ``fixtures``, then the wheel (and its dependencies)."""
    where = tmp_path_factory.mktemp("venv")
    venv.create(where, with_pip=True)
    python = where / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    try:
        run([*pip, TORCH, "fixtures"])
    except AssertionError as exc:
        pytest.skip(f"cannot install {TORCH} and PyPI's fixtures into a fresh environment: {exc}")
    run([*pip, wheel])
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environ["PATH"] = f"{where / 'bin'}{os.pathsep}{environ.get('PATH', '')}"
    return {"python": python, "pip": [python, "-m", "pip"], "environ": environ}


def test_the_wheel_holds_one_top_level_package(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        top_level = zf.read(f"{dist}/top_level.txt").decode().split()
        entry_points = zf.read(f"{dist}/entry_points.txt").decode()
    assert top_level == ["weightcheck"]
    assert {n.split("/")[0] for n in names} == {"weightcheck", dist}
    for expected in (
        "weightcheck/__init__.py",
        "weightcheck/conformance/plugin.py",
        "weightcheck/conformance/properties/roundtrip.py",
        "weightcheck/conformance/test_roundtrip.py",
        "weightcheck/reference_models/reference_loader/loader.py",
        "weightcheck/fixtures/regressions/seed-42716-moe-keyword-ids.json",
    ):
        assert expected in names
    assert "weightcheck = weightcheck.conformance.plugin" in entry_points


def _engine_repo(root: Path) -> Path:
    """An engine's repository: its own top-level ``fixtures`` package, ``tests/strategies.py``
    (a Hypothesis habit) and tests that import both."""
    repo = root / "engine"
    (repo / "fixtures").mkdir(parents=True)
    (repo / "fixtures" / "__init__.py").write_text("ENGINE_FIXTURES = True\n")
    (repo / "fixtures" / "checkpoint.py").write_text("def tiny():\n    return 'engine checkpoint'\n")
    (repo / "tests").mkdir()
    (repo / "tests" / "strategies.py").write_text("from hypothesis import strategies as st\nsizes = st.integers(1, 4)\n")
    (repo / "tests" / "test_engine.py").write_text(
        textwrap.dedent(
            """
            from hypothesis import given

            from fixtures.checkpoint import tiny
            from strategies import sizes


            def test_engine_fixtures():
                assert tiny() == "engine checkpoint"


            @given(sizes)
            def test_engine_strategies(n):
                assert 1 <= n <= 4
            """
        )
    )
    return repo


def test_installed_next_to_pypi_fixtures_and_an_engine_repository(env, tmp_path):
    python, environ = env["python"], env["environ"]
    check = "import fixtures; fixtures.Fixture; import weightcheck; print(weightcheck.__file__)"
    out = run([python, "-c", check], cwd=tmp_path, env=environ).stdout
    assert "site-packages/weightcheck/__init__.py" in out

    repo = _engine_repo(tmp_path)
    result = run(
        [
            python, "-m", "pytest", "tests", "--pyargs", "weightcheck.conformance",
            f"--loader={REFERENCE}", "--hypothesis-profile=ci", "-p", "no:cacheprovider",
            "-k", "test_engine or roundtrip", "-q",
        ],
        cwd=repo,
        env=environ,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", result.stdout)[1])
    # the engine's 2 tests, roundtrip for 5 families and the regression cases' roundtrip runs
    assert passed >= 2 + 5 + 7, result.stdout[-3000:]

    run([*env["pip"], "uninstall", "-y", "-q", "weightcheck"], env=environ)
    run([python, "-c", "import fixtures; fixtures.Fixture"], cwd=tmp_path, env=environ)
