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


ENGINE_CONFIG = """
[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "--strict-markers"
filterwarnings = ["error"]
markers = ["slow: the engine's own marker"]
"""
TINY = "from hypothesis import settings\nsettings.register_profile('tiny', max_examples=3, derandomize=True, database=None, deadline=None)\n"


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Path:
    """An engine repository as a maintainer has one: its own pytest config (testpaths,
    --strict-markers, warnings as errors), a conftest.py, tests of its own."""
    repo = _engine_repo(tmp_path_factory.mktemp("scratch"))
    (repo / "pyproject.toml").write_text(ENGINE_CONFIG)
    (repo / "conftest.py").write_text("import pytest\n\n\n@pytest.fixture\ndef engine_name():\n    return 'engine'\n")
    (repo / "tests" / "test_config.py").write_text(
        "import pytest\n\n\n@pytest.mark.slow\ndef test_uses_its_fixture(engine_name):\n    assert engine_name == 'engine'\n"
    )
    (repo / "tiny_profile.py").write_text(TINY)
    return repo


def suite(env, cwd, *args, check=False):
    return run([env["python"], "-m", "pytest", "-p", "tiny_profile", "--hypothesis-profile=tiny", *args],
               cwd=cwd, env={**env["environ"], "PYTHONPATH": str(cwd)}, check=check)


def test_the_literal_command_runs_the_installed_suite(env, engine):
    result = suite(env, engine, f"--loader={REFERENCE}", "-v")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    examples = int(re.search(r"examples run: (\d+)", out)[1])
    assert examples > 0
    assert "test_roundtrip.py::test_state_matches_checkpoint[llama] PASSED" in out  # the suite
    assert "test_engine" not in out and f"rootdir: {engine}" in out  # the engine's config applied


def test_the_suite_runs_from_any_directory(env, engine, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "tiny_profile.py").write_text(TINY)
    result = suite(env, elsewhere, f"--loader={REFERENCE}", "-q", "-k", "roundtrip")
    assert result.returncode == 0 and "examples run: " in result.stdout, result.stdout[-3000:]


def test_paths_without_the_suite_are_a_usage_error(env, engine):
    result = suite(env, engine, f"--loader={REFERENCE}", "tests")
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    assert "holds no weightcheck conformance test" in result.stderr
    assert f"pytest --loader={REFERENCE}" in result.stderr


def test_a_run_with_no_example_never_passes(env, engine):
    result = suite(env, engine, f"--loader={REFERENCE}", "-m", "gpu")  # no CUDA here: all skipped
    assert result.returncode == 5, result.stdout[-3000:]
    assert "no conformance example ran" in result.stdout


def test_the_engine_alone_is_untouched(env, engine):
    result = run([env["python"], "-m", "pytest", "-q"], cwd=engine, env=env["environ"], check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"\b3 passed\b", result.stdout) and "weightcheck" not in result.stdout


def test_a_replay_runs_in_the_engine_and_keeps_site_packages_clean(env, engine):
    case = Path(run([env["python"], "-c", "import weightcheck.fixtures, pathlib; print(pathlib.Path(weightcheck.fixtures.__file__).parent / 'regressions' / 'seed-42716-moe-keyword-ids.json')"], cwd=engine, env=env["environ"]).stdout.strip())
    result = suite(env, engine, f"--loader={REFERENCE}", f"--replay={case}", "-q")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "test_regression" in result.stdout or "passed" in result.stdout
    site = case.parents[2]
    assert not list(site.parent.glob(".pytest_cache")) and not (site / ".pytest_cache").exists()


def test_uninstalling_leaves_pypi_fixtures_working(env, tmp_path):
    run([*env["pip"], "uninstall", "-y", "-q", "weightcheck"], env=env["environ"])
    run([env["python"], "-c", "import fixtures; fixtures.Fixture"], cwd=tmp_path, env=env["environ"])
