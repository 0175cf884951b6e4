"""The run directory: names, atomic writes, what --overwrite may delete, the lock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from refusals import one_error_line, snapshot

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


# --- links in a run directory never redirect a write ---------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch run as `pyro-vae train` writes it (copied by each case before use)."""
    out = tmp_path_factory.mktemp("trained")
    argv = ["train", "--dataset", "digits", "--hidden", "8", "--latent-dim", "2", "--epochs"]
    argv += ["1", "--num-samples", "2", "--no-progress", "--output-dir", str(out), "--name", "r"]
    assert cli.main(argv) == 0
    return out / "r"


def _linked(tmp_path, trained, entry: str, hard: bool = False, dangling: bool = False):
    """A copy of the run whose ``entry`` is a link to ``victim.txt`` outside it."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    victim = tmp_path / "victim.txt"
    if not dangling:
        victim.write_text("precious")
    (run / entry).unlink(missing_ok=True)
    if hard:
        os.link(victim, run / entry)
    else:
        (run / entry).symlink_to(victim)
    return run, victim


# (id, entry made a link, argv given the run directory); each is refused naming the entry.
LINK_CASES = [
    ("samples-figure", "samples.png", lambda r: ["plot", str(r), "--kind", "samples"]),
    ("elbo-figure", "elbo.png", lambda r: ["train", "--resume", str(r), "--epochs", "2"]),
    ("lock", RunDir.LOCK, lambda r: ["train", "--resume", str(r), "--epochs", "2"]),
    ("metrics", RunDir.METRICS, lambda r: ["train", "--resume", str(r), "--epochs", "2"]),
    ("checkpoint", RunDir.CHECKPOINT, lambda r: ["train", "--resume", str(r), "--epochs", "2"]),
    ("results", RunDir.RESULTS, lambda r: ["train", "--resume", str(r), "--epochs", "2"]),
    ("config", RunDir.CONFIG, lambda r: ["evaluate", str(r), "--num-samples", "2"]),
    ("sampled-grid", "samples-prior.png", lambda r: ["sample", str(r), "-n", "4"]),
    (
        "reconstructions",
        "reconstructions.png",
        lambda r: ["plot", str(r), "--kind", "reconstructions"],
    ),
    (
        "marker-on-overwrite",
        RunDir.MARKER,
        lambda r: [
            "train",
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--hidden",
            "8",
            "--output-dir",
            str(r.parent),
            "--name",
            r.name,
            "--overwrite",
        ],
    ),  # fmt: skip
]


@pytest.mark.parametrize("entry, argv", [c[1:] for c in LINK_CASES], ids=[c[0] for c in LINK_CASES])
def test_a_link_in_a_run_directory_is_refused_naming_it(tmp_path, capsys, trained, entry, argv):
    run, victim = _linked(tmp_path, trained, entry)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert cli.main(argv(run)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"holds {entry!r}, a symbolic link" in line and "never writes through links" in line
    assert victim.read_text() == "precious"
    assert snapshot(tmp_path) == before  # nothing in or outside the run changed


def test_a_dangling_link_is_refused_and_its_target_never_created(tmp_path, capsys, trained):
    run, victim = _linked(tmp_path, trained, "latent.png", dangling=True)
    assert cli.main(["plot", str(run), "--kind", "latent"]) == 2
    assert "'latent.png', a symbolic link" in one_error_line(capsys.readouterr().err)
    assert not victim.exists()


def test_a_lock_link_in_a_fresh_run_directory_is_refused(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "out" / "r").mkdir(parents=True)
    (tmp_path / "out" / "r" / RunDir.LOCK).symlink_to(victim)
    before = snapshot(tmp_path)
    argv = ["train", "--dataset", "digits", "--epochs", "1", "--hidden", "8", "--no-progress"]
    assert cli.main([*argv, "--output-dir", str(tmp_path / "out"), "--name", "r"]) == 2
    assert "'.lock', a symbolic link" in one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


def test_a_hard_linked_lock_is_refused_and_the_other_file_kept(tmp_path, capsys, trained):
    run, victim = _linked(tmp_path, trained, RunDir.LOCK, hard=True)
    assert cli.main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 2
    assert "hard-linked elsewhere" in one_error_line(capsys.readouterr().err)
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("entry", [RunDir.METRICS, RunDir.LOCK])
def test_library_opens_metrics_and_lock_without_following_links(tmp_path, entry):
    run = RunDir(tmp_path / "r").create()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run.file(entry).symlink_to(victim)
    with pytest.raises(CheckpointError, match="symbolic link"):
        if entry == RunDir.LOCK:
            with run.lock():
                pass
        else:
            run.append_metrics({"epoch": 1})
    assert victim.read_text() == "precious"


@pytest.mark.parametrize(
    "write",
    [
        lambda run, name: run.write_json(name, {"a": 1}),
        lambda run, name: run.save_checkpoint({"epoch": 1}),
        lambda run, name: run.write_metrics([{"epoch": 1}]),
    ],
    ids=["json", "checkpoint", "metrics"],
)
def test_atomic_writes_replace_a_link_instead_of_writing_through_it(tmp_path, write):
    run = RunDir(tmp_path / "r").create()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in (RunDir.RESULTS, RunDir.CHECKPOINT, RunDir.METRICS):
        run.file(name).symlink_to(victim)
    write(run, RunDir.RESULTS)
    assert victim.read_text() == "precious"
    written = [p for p in run.path.iterdir() if not p.is_symlink() and p.name != RunDir.MARKER]
    assert len(written) == 1 and written[0].is_file()


def test_a_figure_written_to_a_link_the_user_names_replaces_the_link(tmp_path, capsys, trained):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "grid.png"
    out.symlink_to(victim)
    assert cli.main(["sample", str(trained), "-n", "4", "--output", str(out)]) == 0
    assert victim.read_text() == "precious"
    assert not out.is_symlink() and out.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (lambda t: ["--name", "x" * 300], "is 300 bytes long, more than the 255"),
        (lambda t: ["--output-dir", str(t / "a-file")], "which is a file, not a directory"),
        (lambda t: ["--output-dir", str(t / "a-file" / "deeper")], "which is a file, not a dir"),
        (lambda t: ["--output-dir", str(t / ("d" * 250) / ("e" * 250)) * 9], "is too long"),
    ],
    ids=["long-name", "output-dir-is-a-file", "output-dir-under-a-file", "long-output-dir"],
)
def test_unusable_run_paths_are_one_line_and_exit_2(tmp_path, capsys, argv, fragment):
    (tmp_path / "a-file").write_text("mine")
    before = snapshot(tmp_path)
    train = ["train", "--dataset", "digits", "--epochs", "1", "--hidden", "8", "--no-progress"]
    extra = argv(tmp_path)
    if "--name" not in extra:
        extra += ["--name", "r"]
    if "--output-dir" not in extra:
        extra += ["--output-dir", str(tmp_path / "out")]
    assert cli.main([*train, *extra]) == 2
    assert fragment in one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


def test_the_lock_holder_removes_only_the_run_s_own_stale_temporaries(tmp_path):
    run = RunDir(tmp_path / "r").create()
    stale = [".metrics.jsonl.k1x.tmp", ".checkpoint.pt.9zq.tmp", ".samples.png.a_b.tmp"]
    kept = [".notes.tmp", "mine.tmp", ".data.npy.x1.tmp"]
    for name in stale + kept:
        run.file(name).write_text("left over")
    with run.lock():
        pass
    names = {p.name for p in run.path.iterdir()}
    assert not names & set(stale) and set(kept) <= names
