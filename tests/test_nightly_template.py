"""The downstream nightly workflow template (``ci/templates/weightcheck-nightly.yml``) stays true.

Its structure is checked (triggers, env, install, database restore, uploads with
``if: always()``), and its pytest step is run for real: the ``run:`` block itself, in bash, in a
scratch "engine repository", with only these changes: the loader and profile env vars, ``-n 2``
for ``-n auto``, and a ``-k`` selection through ``PYTEST_ADDOPTS`` to keep it short.

PyYAML is not a dependency, so the workflow is read with a small parser for the block-style YAML
subset the template uses; when PyYAML happens to be installed, the two must agree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from weightcheck.conformance.casefiles import read_case_file

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "ci" / "templates"
WORKFLOW = TEMPLATES / "weightcheck-nightly.yml"
GPT2_CASE = ROOT / "fixtures" / "regressions" / "seed-38074-jais-conv1d-tied-masks.json"
REFERENCE = "weightcheck.reference_models.reference_loader"
RUN_TIMEOUT = 180

# A loader with one bug: transformer.ln_f.bias (gpt2, last pipeline rank) is zeroed after loading.
ZEROING_LOADER = (Path(__file__).parent / "loaders" / "zeroing_loader.py").read_text()


# --- a parser for the block-style YAML subset of the template ----------------------------------

_KEY = re.compile(
    r"""^(?P<key>"[^"]*"|'[^']*'|[^\s#'"\-][^:#]*?|-[^\s:#][^:#]*?)\s*:(?:\s+(?P<rest>.*))?$"""
)


def _is_item(content: str) -> bool:
    return content == "-" or content.startswith("- ")


def _scalar(text: str) -> str:
    text = text.strip()
    quoted = re.match(r'"(?:[^"\\]|\\.)*"|\'(?:[^\']|\'\')*\'', text)
    if quoted:
        if text[quoted.end() :].strip() and not re.match(r"\s+#", text[quoted.end() :]):
            raise ValueError(f"unsupported quoted scalar: {text!r}")
        body = quoted.group(0)
        return json.loads(body) if body[0] == '"' else body[1:-1].replace("''", "'")
    if text[:1] in "\"'":
        raise ValueError(f"unterminated quoted scalar: {text!r}")
    if text[:1] in "[{&*!|>%@`":
        raise ValueError(f"unsupported YAML value (flow style, anchor, tag): {text!r}")
    return re.split(r"\s#", text, maxsplit=1)[0].rstrip()


class _Parser:
    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.i = 0

    def peek(self) -> tuple[int, str] | None:
        while self.i < len(self.lines):
            line = self.lines[self.i]
            content = line.strip()
            if content and not content.startswith("#"):
                if "\t" in line[: len(line) - len(line.lstrip())]:
                    raise ValueError(f"line {self.i + 1}: tab in indentation")
                return len(line) - len(line.lstrip(" ")), content
            self.i += 1
        return None

    def document(self):
        head = self.peek()
        value = self.node(head[0]) if head else None
        if self.peek() is not None:
            raise ValueError(f"line {self.i + 1}: unexpected indentation: {self.lines[self.i]!r}")
        return value

    def node(self, indent: int):
        _, content = self.peek()
        return self.sequence(indent) if _is_item(content) else self.mapping(indent)

    def child(self, indent: int, same_indent_sequence: bool):
        head = self.peek()
        if head is None:
            return None
        deeper = head[0] > indent
        if deeper or (same_indent_sequence and head[0] == indent and _is_item(head[1])):
            return self.node(head[0])
        return None

    def sequence(self, indent: int) -> list:
        items = []
        while (head := self.peek()) and head[0] == indent and _is_item(head[1]):
            rest = head[1][1:].lstrip(" ")
            if not rest:
                self.i += 1
                items.append(self.child(indent, same_indent_sequence=False))
            elif _KEY.match(rest):  # "- key: value" opens a mapping at the column of "key"
                column = indent + len(head[1]) - len(rest)
                self.lines[self.i] = " " * column + rest
                items.append(self.mapping(column))
            else:
                self.i += 1
                items.append(_scalar(rest))
        return items

    def mapping(self, indent: int) -> dict:
        out: dict = {}
        while (head := self.peek()) and head[0] == indent and not _is_item(head[1]):
            match = _KEY.match(head[1])
            if not match:
                raise ValueError(f"line {self.i + 1}: not a 'key: value' line: {head[1]!r}")
            key = _scalar(match["key"]) if match["key"][0] in "\"'" else match["key"]
            if key in out:
                raise ValueError(f"line {self.i + 1}: duplicate key {key!r}")
            rest = (match["rest"] or "").strip()
            self.i += 1
            if rest.startswith(("|", ">")):
                out[key] = self.block(indent, rest)
            elif not rest or rest.startswith("#"):
                out[key] = self.child(indent, same_indent_sequence=True)
            else:
                out[key] = _scalar(rest)
        return out

    def block(self, indent: int, header: str) -> str:
        header = re.split(r"\s#", header, maxsplit=1)[0].strip()
        if header not in ("|", "|-"):
            raise ValueError(f"unsupported block scalar header {header!r} (only | and |-)")
        raw = []
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip() and len(line) - len(line.lstrip(" ")) <= indent:
                break
            raw.append(line)
            self.i += 1
        content = [line for line in raw if line.strip()]
        if not content:
            return ""
        column = len(content[0]) - len(content[0].lstrip(" "))
        text = "\n".join(line[column:] if line.strip() else "" for line in raw).rstrip("\n")
        return text if header == "|-" else text + "\n"


def parse_workflow(text: str) -> dict:
    return _Parser(text).document()


# --- the workflow ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workflow() -> dict:
    return parse_workflow(WORKFLOW.read_text())


def steps(workflow: dict) -> list[dict]:
    (job,) = workflow["jobs"].values()
    return job["steps"]


def resolve(workflow: dict, value: str) -> str:
    """Substitute ``${{ env.NAME }}`` with the workflow-level env value."""
    return re.sub(r"\$\{\{\s*env\.(\w+)\s*\}\}", lambda m: workflow["env"][m[1]], value)


def pytest_step(workflow: dict) -> dict:
    (step,) = [s for s in steps(workflow) if re.search(r"\bpytest\b", s.get("run", ""))]
    return step


def uploads(workflow: dict) -> dict[str, dict]:
    """Upload steps by resolved artifact name."""
    return {
        resolve(workflow, s["with"]["name"]): s
        for s in steps(workflow)
        if s.get("uses", "").startswith("actions/upload-artifact@")
    }


def option(command: str, name: str) -> str:
    match = re.search(rf"(?:^|\s){re.escape(name)}=(\S+)", command)
    assert match, f"{name} missing from the pytest step"
    return match[1].strip("\"'")


def test_triggers_env_and_install(workflow):
    assert "cron" in workflow["on"]["schedule"][0]
    assert "workflow_dispatch" in workflow["on"]
    env = workflow["env"]
    assert env["WEIGHTCHECK_PROFILE"] == "nightly"
    assert env["WEIGHTCHECK_LOADER"]
    assert env["WEIGHTCHECK_SPEC"].startswith("weightcheck @ git+https://")
    uses = [s.get("uses", "") for s in steps(workflow)]
    assert any(u.startswith("actions/checkout@") for u in uses)
    (python,) = [s for s in steps(workflow) if s.get("uses", "").startswith("actions/setup-python@")]
    assert python["with"]["python-version"] == "3.11"
    install = next(s["run"] for s in steps(workflow) if "pip install" in s.get("run", ""))
    assert '"$WEIGHTCHECK_SPEC"' in install and "pip install -e ." in install


def test_pytest_step_has_the_nightly_options(workflow):
    step = pytest_step(workflow)
    command = step["run"]
    assert "${{" not in command, "the pytest step must be plain bash (the test runs it as is)"
    for needed in (
        '--loader="$WEIGHTCHECK_LOADER"',
        '--hypothesis-profile="$WEIGHTCHECK_PROFILE"',
        "-n auto",
        "--weightcheck-out=weightcheck-results",
        "--report-json=weightcheck-results/report.json",
        "--junitxml=weightcheck-results/junit.xml",
        "--expect-fail=.weightcheck/expect-fail.txt",
        "--regressions=.weightcheck/regressions",
    ):
        assert needed in command, needed
    assert "if" not in step, "the suite runs on every trigger"


def test_results_and_database_are_uploaded_even_on_failure(workflow):
    command = pytest_step(workflow)["run"]
    out = Path(option(command, "--weightcheck-out"))
    for flag in ("--report-json", "--junitxml"):
        assert out in Path(option(command, flag)).parents, f"{flag} is outside the uploaded results"
    by_name = uploads(workflow)
    order = steps(workflow)
    test_index = order.index(pytest_step(workflow))

    results = by_name["weightcheck-results"]
    assert Path(results["with"]["path"]) == out
    db_name = workflow["env"]["WEIGHTCHECK_DB_ARTIFACT"]
    assert db_name == "hypothesis-example-db"  # GitHubArtifactDatabase's default artifact_name
    database = by_name[db_name]
    # the artifact's root must be the examples directory itself: GitHubArtifactDatabase reads
    # <key hash>/<value hash> entries at the top of the zip
    assert Path(database["with"]["path"]) == Path(".hypothesis/examples")
    assert database["with"]["include-hidden-files"] == "true"  # .hypothesis is a hidden directory
    for step in (results, database):
        assert step["if"] == "always()"
        assert order.index(step) > test_index

    (restore,) = [s for s in order if s.get("uses", "").startswith("actions/download-artifact@")]
    assert resolve(workflow, restore["with"]["name"]) == db_name
    assert Path(restore["with"]["path"]) == Path(".hypothesis/examples")
    assert restore["with"]["run-id"] and restore["with"]["github-token"]
    assert restore.get("continue-on-error") == "true"
    assert order.index(restore) < test_index
    job = next(iter(workflow["jobs"].values()))
    assert workflow.get("permissions", job.get("permissions", {})).get("actions") == "read"


def test_parser_agrees_with_pyyaml():
    yaml = pytest.importorskip("yaml")

    def normal(value):
        if isinstance(value, dict):
            return {("on" if k is True else str(k)): normal(v) for k, v in value.items()}
        if isinstance(value, list):
            return [normal(v) for v in value]
        if isinstance(value, bool):
            return str(value).lower()
        return None if value is None else str(value)

    text = WORKFLOW.read_text()
    assert parse_workflow(text) == normal(yaml.safe_load(text))


def test_parser_rejects_what_it_does_not_understand():
    for text in ("a: [1, 2]\n", "a: >\n  folded\n", "a: 1\n    b: 2\n", "a: 1\na: 2\n"):
        with pytest.raises(ValueError):
            parse_workflow(text)


# --- the database look-up step -----------------------------------------------------------------

FAKE_GH = """#!/usr/bin/env bash
# gh api URL --jq FILTER, answered from $FAKE_ARTIFACTS with jq (gh applies --jq itself)
echo "$*" >> "$FAKE_GH_CALLS"
[ "$1" = api ] && [ "$3" = --jq ] || exit 2
[ -f "$FAKE_ARTIFACTS" ] || { echo "HTTP 403: Resource not accessible by integration" >&2; exit 1; }
exec jq -r "$4" "$FAKE_ARTIFACTS"
"""


def artifact(run_id: int, created: str, expired: bool = False) -> dict:
    return {
        "name": "hypothesis-example-db",
        "expired": expired,
        "created_at": created,
        "workflow_run": {"id": run_id},
    }


@pytest.mark.parametrize(
    "artifacts, expected",
    [
        pytest.param(
            [
                artifact(111, "2026-01-01T03:20:00Z"),
                artifact(333, "2026-01-03T03:20:00Z", expired=True),
                artifact(222, "2026-01-02T03:20:00Z"),
            ],
            "222",
            id="newest-unexpired",
        ),
        pytest.param([], "", id="none-yet"),
        pytest.param(None, "", id="api-error"),
    ],
)
def test_database_lookup_step_finds_the_newest_artifact(workflow, tmp_path, artifacts, expected):
    if artifacts is not None and shutil.which("jq") is None:
        pytest.skip("jq is not installed (gh applies --jq itself on a runner)")
    (step,) = [s for s in steps(workflow) if s.get("id") == "previous-db"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text(FAKE_GH)
    (bin_dir / "gh").chmod(0o755)
    (tmp_path / "step.sh").write_text(step["run"])
    env = dict(
        os.environ,
        **workflow["env"],
        GH_TOKEN="dummy",
        GITHUB_REPOSITORY="acme/engine",
        GITHUB_OUTPUT=str(tmp_path / "output"),
        FAKE_GH_CALLS=str(tmp_path / "calls"),
        FAKE_ARTIFACTS=str(tmp_path / "artifacts.json"),
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    if artifacts is not None:
        (tmp_path / "artifacts.json").write_text(json.dumps({"artifacts": artifacts}))
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "step.sh"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "output").read_text() == f"run-id={expected}\n"
    (call,) = (tmp_path / "calls").read_text().splitlines()
    assert call.startswith("api repos/acme/engine/actions/artifacts?name=hypothesis-example-db&")


# --- running the pytest step -------------------------------------------------------------------


def run_pytest_step(workflow: dict, repo: Path, loader: str, profile: str, select: str):
    step = pytest_step(workflow)
    script = step["run"]
    assert script.count("-n auto") == 1
    script = script.replace("-n auto", "-n 2")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HYPOTHESIS_"))}
    env.update(workflow.get("env", {}))
    env.update(step.get("env", {}))
    env.update(
        WEIGHTCHECK_LOADER=loader,
        WEIGHTCHECK_PROFILE=profile,
        PYTEST_ADDOPTS=f"-p no:cacheprovider -k '{select}'",
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
    )
    (repo / "step.sh").write_text(script)
    # GitHub runs `shell: bash` steps as: bash --noprofile --norc -eo pipefail {0}
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "step.sh"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def report(repo: Path) -> dict:
    return json.loads((repo / "weightcheck-results" / "report.json").read_text())


def outcomes(body: dict) -> dict[str, str]:
    return {t["id"]: t["outcome"] for t in body["tests"]}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, workflow):
    """A repository without .weightcheck/: the reference loader, the ci profile, the bundled
    regression corpus only (the known-bug run below runs a Hypothesis property)."""
    repo = tmp_path_factory.mktemp("engine-clean")
    result = run_pytest_step(workflow, repo, REFERENCE, "ci", "test_regression")
    return repo, result


@pytest.fixture(scope="module")
def known_bug_run(tmp_path_factory, workflow):
    """A repository with .weightcheck/expect-fail.txt and .weightcheck/regressions/, a loader
    with one bug (listed for its regression case only), and the nightly profile."""
    repo = tmp_path_factory.mktemp("engine-known-bug")
    (repo / "zeroing_loader.py").write_text(ZEROING_LOADER)
    (repo / ".weightcheck" / "regressions").mkdir(parents=True)
    shutil.copy(GPT2_CASE, repo / ".weightcheck" / "regressions" / "local-gpt2-case.json")
    (repo / ".weightcheck" / "expect-fail.txt").write_text(
        textwrap.dedent(
            """\
            # known failures of this loader
            regression[local-gpt2-case]/roundtrip: ln_f.bias is zeroed after loading
            """
        )
    )
    select = (
        "test_regression and local-gpt2-case and roundtrip"
        " or test_state_matches_checkpoint and gpt2"
    )
    result = run_pytest_step(workflow, repo, "zeroing_loader", "nightly", select)
    return repo, result


def test_pytest_step_passes_on_the_reference_loader(clean_run):
    repo, result = clean_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    body = report(repo)
    assert body["schema_version"] == 2
    assert body["run"]["profile"] == "ci"
    assert body["run"]["loader"] == REFERENCE
    assert set(body["summary"]) <= {"passed", "skipped"} and body["summary"]["passed"] > 0
    seen = outcomes(body)
    assert seen["regression[seed-38074-jais-conv1d-tied-masks]/roundtrip"] == "passed"
    junit = (repo / "weightcheck-results" / "junit.xml").read_text()
    assert "<testsuite" in junit and "seed-38074-jais-conv1d-tied-masks/roundtrip" in junit
    assert not (repo / "weightcheck-results" / "cases").exists()


def test_pytest_step_uses_the_optional_files_and_keeps_the_failing_case(known_bug_run):
    repo, result = known_bug_run
    # roundtrip[gpt2] fails and is not listed: the step (so the job) fails ...
    assert result.returncode == 1, result.stdout[-4000:] + result.stderr[-2000:]
    body = report(repo)
    assert body["schema_version"] == 2
    assert body["run"]["profile"] == "nightly"
    # ... the listed regression case of .weightcheck/regressions/ is an expected failure (its ID
    # is only valid when --regressions was passed, and only xfails when --expect-fail was) ...
    assert outcomes(body) == {
        "regression[local-gpt2-case]/roundtrip": "xfailed",
        "roundtrip[gpt2]": "failed",
    }
    # ... and the case file of the new failure is in the results the workflow uploads
    (failed,) = [t for t in body["tests"] if t["outcome"] == "failed"]
    cases = sorted((repo / "weightcheck-results" / "cases").glob("roundtrip-gpt2-*.json"))
    assert [Path(failed["case_file"])] == [c.resolve() for c in cases]
    example, meta = read_case_file(cases[0])
    assert example.property == "roundtrip" and meta["test"] == "roundtrip[gpt2]"
    assert "--replay=" in result.stdout  # the replay commands the README points to
    junit = (repo / "weightcheck-results" / "junit.xml").read_text()
    assert 'failures="1"' in junit and 'skipped="1"' in junit


def test_a_failing_nightly_run_saves_examples_for_the_database_artifact(known_bug_run):
    repo, _ = known_bug_run
    assert any(p.is_file() for p in (repo / ".hypothesis" / "examples").rglob("*"))


def test_readme_database_snippet_builds_its_profile(tmp_path):
    readme = (TEMPLATES / "README.md").read_text()
    blocks = re.findall(r"```python\n(.+?)```", readme, re.S)
    (snippet,) = [b for b in blocks if "GitHubArtifactDatabase" in b]
    check = snippet + textwrap.dedent(
        """
        from hypothesis import settings
        db = repr(settings.get_profile("nightly-replay").database)
        assert db.startswith("MultiplexedDatabase(DirectoryBasedExampleDatabase("), db
        assert "ReadOnlyDatabase(GitHubArtifactDatabase(" in db, db
        assert "artifact_name='hypothesis-example-db'" in db, db
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-c", check],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "ok", result.stderr
