"""The run directory: names, atomic writes, what --overwrite may delete, the lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pyro_vae import cli
from pyro_vae.errors import CheckpointError, ConfigError
from pyro_vae.runs import RunDir, check_run_name, printable


@pytest.mark.parametrize("name", ["..", ".", "", "  ", "a/b", "../../v", "/abs", "x\0y"])
def test_run_name_must_be_one_path_component(name):
    with pytest.raises(ConfigError, match="run name"):
        check_run_name(name)


def test_a_plain_name_is_kept():
    assert check_run_name("digits-beta2") == "digits-beta2"
    assert RunDir.named("out", "r1").path.as_posix() == "out/r1"


def test_overwrite_never_deletes_the_output_dir_or_a_sibling(tmp_path):
    out = tmp_path / "runs"
    sibling = RunDir(out / "sibling").create()
    sibling.write_json(RunDir.CONFIG, {"keep": 1})
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a pyro-vae run directory"):
        RunDir(out).create(overwrite=True)
    with pytest.raises(ConfigError, match="run name"):
        RunDir.named(out, ".")
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads(sibling.file(RunDir.CONFIG).read_text()) == {"keep": 1}


def test_cli_name_dot_dot_with_overwrite_is_one_line_exit_2(tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data.txt").write_text("precious")
    out = tmp_path / "out" / "deeper"
    argv = ["train", "--dataset", "digits", "--epochs", "1", "--output-dir", str(out)]
    code = cli.main([*argv, "--name", "../../victim", "--overwrite", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "single directory name" in err[0]
    assert (victim / "data.txt").read_text() == "precious"


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    run = RunDir(tmp_path / "r").create()
    run.write_json(RunDir.RESULTS, {"a": 1})
    run.write_json(RunDir.RESULTS, {"a": 2})
    assert json.loads(run.file(RunDir.RESULTS).read_text()) == {"a": 2}
    assert sorted(p.name for p in run.path.iterdir()) == sorted([RunDir.MARKER, RunDir.RESULTS])


def test_record_config_writes_once_and_merges(tmp_path):
    run = RunDir(tmp_path / "r").create()
    run.record_config({"train": {"epochs": 2}}, defaults={"dataset": "digits"})
    before = run.file(RunDir.CONFIG).stat().st_mtime_ns
    run.record_config({"train": {"epochs": 2}}, defaults={"dataset": "other"})
    assert run.file(RunDir.CONFIG).stat().st_mtime_ns == before  # unchanged: not rewritten
    run.record_config({"train": {"epochs": 5}})
    assert run.read_json(RunDir.CONFIG) == {"dataset": "digits", "train": {"epochs": 5}}


def test_second_holder_of_the_lock_is_refused_naming_the_first(tmp_path):
    run = RunDir(tmp_path / "r")
    with run.lock():
        with pytest.raises(
            CheckpointError, match=f"in use by another process \\(pid {os.getpid()}"
        ):
            with run.lock():
                pass
        code = (
            "import sys\nfrom pyro_vae.runs import RunDir\n"
            "try:\n    RunDir(sys.argv[1]).lock().__enter__()\n"
            "except Exception as e:\n    print(e)\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, str(run.path)], capture_output=True, text=True
        )
        assert f"pid {os.getpid()}" in proc.stdout and "in use" in proc.stdout
    with run.lock():  # released on exit
        pass


def test_printable_escapes_undecodable_and_control_characters():
    name = os.fsdecode(b"caf\xe9\n.npy")
    shown = printable(name)
    assert shown.isprintable() and "\\udce9" in shown and "\\n" in shown
    assert printable("digits") == "digits"


def test_a_config_file_cannot_carry_overwrite(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"name": "r", "overwrite": True, "epochs": 1}))
    code = cli.main(["train", "--config", str(config), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "may not set 'overwrite'" in err[0]
    assert not (tmp_path / "out").exists()
