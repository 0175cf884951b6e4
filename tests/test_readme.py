"""The README's commands stay true: CI runs the README's test command; the code is lint-clean."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks(text: str) -> list[str]:
    blocks, inside, current = [], False, []
    for line in text.splitlines():
        if line.startswith("```bash"):
            inside, current = True, []
        elif line.startswith("```") and inside:
            blocks.append("\n".join(current).strip())
            inside = False
        elif inside:
            current.append(line)
    return blocks


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    test_commands = [b for b in _bash_blocks(readme) if "pytest" in b]
    assert len(test_commands) == 1
    ci_lines = [line for line in (ROOT / ".ci/run").read_text().splitlines() if "pytest" in line]
    assert ci_lines == [test_commands[0]]


def test_readme_trains_with_the_main_command():
    readme = (ROOT / "README.md").read_text()
    assert any(b.endswith("pyro-vae train") for b in _bash_blocks(readme))


def test_ruff_clean():
    """ruff is part of the test extras."""
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "pyro_vae", "tests", "benchmarks", "examples"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
