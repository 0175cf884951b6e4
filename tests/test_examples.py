"""Every script in examples/ runs, on tiny settings, so none can rot.

A new example needs a row in :data:`TINY` (its arguments for a run of a few seconds).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

#: example file name -> (arguments for a tiny run, files it must write in its working folder)
TINY: dict[str, tuple[list[str], list[str]]] = {
    "train_digits.py": (["--epochs", "1", "--num-samples", "20"], ["digits-samples.png"]),
    "score_any_model.py": ([], []),
}


def test_every_example_has_tiny_settings():
    assert EXAMPLES
    assert {p.name for p in EXAMPLES} == set(TINY), "add the new example to TINY"


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script, tmp_path):
    args, outputs = TINY[script.name]
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="agg")
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "an example prints what it found"
    for name in outputs:
        assert (tmp_path / name).stat().st_size > 0
