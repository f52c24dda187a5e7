"""End-to-end tests of the weightcheck pytest plugin (``weightcheck.conformance.plugin``).

Every run is a subprocess (``runpytest_subprocess``): the plugin loads Hypothesis profiles and
seeds, which are process-global.  Each run imports torch (about 2 s), so runs are few and the
ones that run real properties select a single test.  Loaders under test are written into the
pytester directory, which is the subprocess's working directory and on its PYTHONPATH.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import pytest

import weightcheck.conformance
from weightcheck.capabilities import LoaderSpecError
from weightcheck.families import FAMILY_NAMES
from weightcheck.conformance.protocol import resolve_loader

CONFORMANCE = Path(weightcheck.conformance.__file__).resolve().parent
REFERENCE = "weightcheck.reference_models.reference_loader"
TIMEOUT = 180

ROUNDTRIP_GPT2 = f"{CONFORMANCE / 'test_roundtrip.py'}::test_state_matches_checkpoint[gpt2]"
TRACKING = str(CONFORMANCE / "test_tracking.py")

# Loader modules written into the pytester directory.
LOADERS = {
    "no_load_method": """
        class BuildOnly:
            def build(self, arch, placement):
                return None

        loader = BuildOnly()
    """,
    "raises_on_import": """
        raise RuntimeError("this loader module is broken on purpose")
    """,
    "unknown_caps": """
        from weightcheck.reference_models.reference_loader import loader as ref

        class UnknownCaps:
            capabilities = {"families": ["llama", "mamba"], "features": ["warp_drive"]}
            build = staticmethod(ref.build)
            load = staticmethod(ref.load)

        loader = UnknownCaps()
    """,
    "caps_not_names": """
        from weightcheck.reference_models.reference_loader import loader as ref

        class CapsNotNames:
            capabilities = {"families": 5}
            build = staticmethod(ref.build)
            load = staticmethod(ref.load)

        loader = CapsNotNames()
    """,
    "caps_bare_string": """
        class CapsBareString:
            capabilities = {"families": "llama"}

            def build(self, arch, placement):
                return None

            def load(self, model, checkpoint):
                return None

        loader = CapsBareString()
    """,
    # Correct except that one runtime parameter is zeroed after loading.
    "zeroing_loader": (Path(__file__).parent / "loaders" / "zeroing_loader.py").read_text(),
    # The same bug, in tied models only (a bug bound to one feature).
    "zeroing_when_tied": """
        from zeroing_loader import Zeroing, ref

        class ZeroingWhenTied(Zeroing):
            name = "zeroes transformer.ln_f.bias of tied models"

            def build(self, arch, placement):
                model = ref.build(arch, placement)
                model.tied_for_the_test = arch.tie_word_embeddings
                return model

            def load(self, model, checkpoint):
                if model.tied_for_the_test:
                    return super().load(model, checkpoint)
                return ref.load(model, checkpoint)

        loader = ZeroingWhenTied()
    """,
    # Supports llama only, no optional features, and does no weight tracking.
    "llama_untracked": """
        from weightcheck.reference_models.reference_loader import loader as ref

        class LlamaUntracked:
            name = "llama only, untracked"
            capabilities = {"families": ["llama"], "features": []}

            def build(self, arch, placement):
                return ref.build(arch, placement)

            def load(self, model, checkpoint):
                ref.load(model, checkpoint)
                return None

        loader = LlamaUntracked()
    """,
}


@pytest.fixture
def loaders(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(**LOADERS)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=TIMEOUT)


def output(result: pytest.RunResult) -> str:
    return result.stdout.str() + "\n" + result.stderr.str()


def summary_section(result: pytest.RunResult) -> list[str]:
    """The lines of the 'conformance matrix' terminal summary section."""
    lines = result.outlines
    start = next(
        i for i, line in enumerate(lines) if "weightcheck: conformance matrix" in line
    )
    section = []
    for line in lines[start + 1 :]:
        if line.startswith("="):
            break
        if line.strip():
            section.append(line)
    return section


# --- usage errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        pytest.param(("--pyargs", "weightcheck.conformance"), "needs --loader", id="pyargs-no-loader"),
        pytest.param((str(CONFORMANCE),), "needs --loader", id="path-no-loader"),
        pytest.param(
            ("--loader=no_such_module_xyz",),
            "no module named 'no_such_module_xyz'",
            id="no-such-module",
        ),
        pytest.param(("--loader=a:b:c",), "is not of the form MODULE[:ATTR]", id="malformed"),
        pytest.param(
            (f"--loader={REFERENCE}:nope",),
            f"module '{REFERENCE}' has no 'nope'",
            id="missing-attribute",
        ),
        pytest.param(
            ("--loader=no_load_method",), "lacks callable load()", id="object-without-load"
        ),
        pytest.param(
            ("--loader=raises_on_import",),
            "importing 'raises_on_import' raised RuntimeError: "
            "this loader module is broken on purpose",
            id="raises-on-import",
        ),
        pytest.param(
            ("--loader=unknown_caps",),
            "capabilities name unknown families or features ['mamba', 'warp_drive']",
            id="unknown-capabilities",
        ),
    ],
)
def test_usage_error(loaders, args, expected):
    result = run(loaders, *args)
    text = output(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, text
    errors = [line for line in result.errlines if line.startswith("ERROR:")]
    assert len(errors) == 1, text
    assert expected in errors[0], text
    assert "Traceback" not in text
    assert "INTERNALERROR" not in text


@pytest.mark.parametrize(
    "module, expected",
    [
        ("caps_not_names", "capabilities families must be a collection of names"),
        ("caps_bare_string", "capabilities families must be a collection of names"),
    ],
)
def test_malformed_capabilities_are_spec_errors(loaders, module, expected):
    """In-process: resolve_loader's errors are what the plugin turns into usage errors.  A
    non-collection used to escape as TypeError (an INTERNALERROR traceback), and a bare string
    was split into one-letter families ['a', 'l', 'm']."""
    loaders.syspathinsert()
    with pytest.raises(LoaderSpecError, match=re.escape(expected)):
        resolve_loader(module)


# --- inert without --loader -------------------------------------------------------------------


def test_inert_in_other_projects(pytester):
    pytester.makepyfile(test_trivial="def test_ok():\n    assert True\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.OK, output(result)
    result.assert_outcomes(passed=1)
    assert not any(line.startswith("weightcheck:") for line in result.outlines)
    assert "weightcheck: conformance matrix" not in output(result)


# --- header, xdist, determinism ---------------------------------------------------------------


def test_header_and_xdist_determinism(pytester):
    """Workers draw with the controller's seed: a run with ``-n 2`` and no seed exercises exactly
    what a serial run with the seed from its header does."""
    parallel = run(pytester, "-n", "2", f"--loader={REFERENCE}", TRACKING)
    assert parallel.ret == pytest.ExitCode.OK, output(parallel)
    parallel.assert_outcomes(passed=len(FAMILY_NAMES))
    assert "2 workers" in parallel.stdout.str()
    seed_line = [line for line in parallel.outlines if line.startswith("weightcheck: hypothesis")]
    match = re.fullmatch(r"weightcheck: hypothesis profile dev, seed (\d+)", seed_line[0])
    assert match, seed_line  # dev is the default profile, and it gets a random seed
    seed = match.group(1)

    serial = run(
        pytester, "-n", "0", "--hypothesis-profile=dev", f"--hypothesis-seed={seed}",
        f"--loader={REFERENCE}", TRACKING,
    )
    assert serial.ret == pytest.ExitCode.OK, output(serial)
    serial.assert_outcomes(passed=len(FAMILY_NAMES))
    header = [line for line in serial.outlines if line.startswith("weightcheck: ")]
    assert header[0] == f"weightcheck: loader {REFERENCE} (weightcheck reference loader)"
    versions = ", ".join(
        f"{pkg} {metadata.version(pkg)}"
        for pkg in ("weightcheck", "torch", "safetensors", "hypothesis")
    )
    assert header[1] == f"weightcheck: {versions}"
    assert header[2] == f"weightcheck: hypothesis profile dev, seed {seed}"
    assert len(header) == 3  # the reference loader supports everything

    serial_summary, parallel_summary = summary_section(serial), summary_section(parallel)
    examples = [line for line in serial_summary if line.startswith("examples run: ")]
    assert len(examples) == 1 and int(examples[0].split(": ")[1]) >= 2 * 50
    assert parallel_summary == serial_summary


# --- a wrong loader -----------------------------------------------------------------------------


def test_failing_loader_reports_parameter_and_replay(loaders):
    result = run(
        loaders,
        "--loader=zeroing_loader",
        "--hypothesis-profile=dev",
        "--hypothesis-seed=7",
        ROUNDTRIP_GPT2,
    )
    text = output(result)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, text
    result.assert_outcomes(failed=1)
    assert "Traceback" not in result.stderr.str()
    # The property's message names the runtime parameter and what it holds, in one screen.
    result.stdout.fnmatch_lines(
        [
            "PropertyFailure: round trip: the loaded state differs from the checkpoint",
            "  - all of transformer.ln_f.bias (*) should be transformer.ln_f.bias; it holds zeros",
        ]
    )
    block = text.split("test_state_matches_checkpoint[gpt2] _", 1)[1].split("weightcheck: conformance matrix")[0]
    assert len(block.strip().splitlines()) <= 25, block
    # The replay section gives commands that rerun exactly this test with this seed, from here.
    result.stdout.fnmatch_lines(["*weightcheck: replay*"])
    replay = (
        "pytest --loader=zeroing_loader --hypothesis-profile=dev --hypothesis-seed=7 "
        "-k 'test_state_matches_checkpoint[gpt2]'"
    )
    assert any(line.endswith(replay) for line in result.outlines), text
    # ... and the case file, replayed alone with no test path, fails the same way.
    case_line = next(line for line in result.outlines if line.startswith("this case again: "))
    case_file = case_line.rsplit("--replay=", 1)[1]
    assert case_line == f"this case again: pytest --loader=zeroing_loader --replay={case_file}"
    replayed = run(loaders, "--loader=zeroing_loader", f"--replay={case_file}")
    assert replayed.ret == pytest.ExitCode.TESTS_FAILED, output(replayed)
    assert "transformer.ln_f.bias" in output(replayed)
    assert "test_regression[" in output(replayed) and "test_state_matches" not in output(replayed)
    # a failing replay is counted: the matrix never says passed for it
    assert re.search(r"family gpt2 +FAILED", output(replayed)), output(replayed)
    assert "the whole test again" not in output(replayed)


def test_capabilities_and_untracked_loader(loaders):
    """Families outside the capabilities and load() -> None are skips, with reasons."""
    result = run(
        loaders, "--loader=llama_untracked", "--hypothesis-profile=ci", "-rs", TRACKING
    )
    text = output(result)
    assert result.ret == pytest.ExitCode.OK, text
    result.assert_outcomes(skipped=len(FAMILY_NAMES))
    result.stdout.fnmatch_lines(
        [
            "weightcheck: loader llama_untracked (llama only, untracked)",
            "weightcheck: hypothesis profile ci, derandomized (no seed)",
            "weightcheck: not supported by the loader: deepseek_v32, gpt2, qwen2_moe, qwen3_moe, "
            "attention_bias, *, sharded_checkpoint, tensor_parallel, tied_embeddings",
        ]
    )
    # Both reasons, in whichever order the short summary lists them.
    result.stdout.fnmatch_lines(
        ["SKIPPED *test_tracking.py*not supported by the loader: family gpt2"]
    )
    result.stdout.fnmatch_lines(
        ["SKIPPED *not supported by the loader: load() returned None*"]
    )
    summary = summary_section(result)
    assert re.search(r"^  tensor_parallel +not supported by the loader +0$", "\n".join(summary), re.M)
    assert re.search(r"^  family gpt2 +not supported by the loader +0$", "\n".join(summary), re.M)


def test_loading_the_plugin_does_not_import_torch():
    """The entry point loads in every pytest run wherever weightcheck is installed."""
    import subprocess
    import sys

    code = "import sys, weightcheck.conformance.plugin; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- expectations and the JSON report ----------------------------------------------------------


def test_expect_fail_turns_known_failures_into_xfail_and_flags_fixed_ones(loaders):
    loaders.makefile(
        ".txt",
        expect="# known bugs of the zeroing loader\n"
        "roundtrip[gpt2]: ln_f.bias is zeroed after loading\n"
        "roundtrip[llama]: not a bug: this entry must come back as a strict xpass\n",
    )
    result = run(
        loaders,
        "--loader=zeroing_loader",
        "--hypothesis-profile=ci",
        "--expect-fail=expect.txt",
        "--report-json=out/report.json",
        f"{CONFORMANCE / 'test_roundtrip.py'}::test_state_matches_checkpoint[gpt2]",
        f"{CONFORMANCE / 'test_roundtrip.py'}::test_state_matches_checkpoint[llama]",
    )
    text = output(result)
    result.assert_outcomes(xfailed=1, failed=1)  # the llama entry passes: a strict xpass fails
    assert "XPASS(strict)" in text
    report = json.loads((loaders.path / "out" / "report.json").read_text())
    assert report["schema_version"] == 2
    outcomes = {t["id"]: t["outcome"] for t in report["tests"]}
    assert outcomes == {"roundtrip[gpt2]": "xfailed", "roundtrip[llama]": "failed"}
    assert {row["feature"] for row in report["matrix"]} >= {"family gpt2", "lora", "tensor_parallel"}
    gpt2 = next(row for row in report["matrix"] if row["feature"] == "family gpt2")
    assert gpt2["status"] == "known failure" and gpt2["known_failures"] == ["roundtrip[gpt2]"]
    assert "KNOWN FAILURE" in text


def test_expect_fail_when_a_feature_expects_only_the_examples_using_it(loaders):
    """``roundtrip[gpt2] when tied_embeddings``: the loader whose bug is bound to tied models
    passes (its tied examples counted as known failures, never established); the loader whose
    bug is in every model fails, on an untied example."""
    loaders.makefile(".txt", expect="roundtrip[gpt2] when tied_embeddings: ln_f.bias is zeroed in tied models\n")
    common = ("--hypothesis-profile=ci", "--expect-fail=expect.txt", "--report-json=out/report.json", ROUNDTRIP_GPT2)
    bound = run(loaders, "--loader=zeroing_when_tied", "-rP", *common)
    text = output(bound)
    bound.assert_outcomes(passed=1)
    assert "failed as expected by: roundtrip[gpt2] when tied_embeddings" in text  # -rP shows it
    assert re.search(r"tied_embeddings +KNOWN FAILURE .*roundtrip\[gpt2\]", text)
    report = json.loads((loaders.path / "out" / "report.json").read_text())
    rows = {row["feature"]: row for row in report["matrix"]}
    tied = rows["tied_embeddings"]
    assert tied["status"] == "known failure" and tied["known_failures"] == ["roundtrip[gpt2]"]
    (test,) = report["tests"]
    known = test["features"]["known: tied_embeddings"]
    assert known > 0 and tied["established"] == tied["examples"] - known  # never established

    everywhere = run(loaders, "--loader=zeroing_loader", *common)
    everywhere.assert_outcomes(failed=1)
    report = json.loads((loaders.path / "out" / "report.json").read_text())
    (test,) = report["tests"]
    case = json.loads(Path(test["case_file"]).read_text())["case"]
    assert case["arch"]["tie_word_embeddings"] is False  # the failure no entry expects


def test_expect_fail_when_names_a_feature_and_a_property_test(loaders):
    for line, message in (
        ("roundtrip[gpt2] when warp_drive: x", "names no feature of the matrix: ['warp_drive']"),
        ("regression[seed-38074-jais-conv1d-tied-masks] when tied_embeddings: x", "narrows property tests"),
    ):
        loaders.makefile(".txt", expect=line + "\n")
        result = run(loaders, "--loader=zeroing_loader", "--expect-fail=expect.txt", str(CONFORMANCE))
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert message in result.stderr.str()


def test_expect_fail_entry_matching_nothing_is_a_usage_error(loaders):
    loaders.makefile(".txt", expect="roundtrip[mamba]: no such family\n")
    result = run(loaders, "--loader=zeroing_loader", "--expect-fail=expect.txt", str(CONFORMANCE))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "match no test: 'roundtrip[mamba]' (line 1)" in result.stderr.str()


def test_unsupported_regression_case_is_reported_not_dropped(loaders):
    corpus = loaders.mkdir("corpus")
    source = CONFORMANCE.parent / "fixtures" / "regressions" / "seed-37114-lora-experts-base-layer.json"
    (corpus / "downstream-moe.json").write_text(source.read_text())
    result = run(
        loaders, "--loader=llama_untracked", "--regressions=corpus", "-rs", "-k", "downstream",
        str(CONFORMANCE / "test_regressions.py"),
    )
    text = output(result)
    # nothing ran: never a pass (exit 5), and the skip says why
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED, text
    result.stdout.fnmatch_lines(["SKIPPED *not supported by the loader: family qwen3_moe*"])
    assert "no conformance example ran" in text
