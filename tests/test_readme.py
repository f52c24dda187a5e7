"""The README's two set-up commands are what CI runs, so they cannot rot."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", setup)[:2]


def test_readme_has_two_setup_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert "--loader=weightcheck.reference_models.reference_loader" in commands[0]
    assert "pytest tests" in commands[1]


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    for command in readme_commands():
        assert command in ci
