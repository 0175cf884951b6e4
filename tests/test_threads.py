"""Intra-op threads: a count the user fixed is kept; ``auto`` gives up the cores other processes
use and takes them back when they are free; ``fit`` restores torch's count when it ends."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from pyro_vae.errors import ConfigError
from pyro_vae.runtime import threads as th


@pytest.fixture(autouse=True)
def _no_fixing_variables(monkeypatch):
    for name in th.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("value", ["x", 0, -1, 1.5, True, "2.5", [2], th.MOST_THREADS + 1])
def test_bad_thread_counts_are_refused_with_the_allowed_range(value):
    with pytest.raises(ConfigError, match="must be 'auto' or a thread count from 1 to 1024"):
        th.check_threads(value)


@pytest.mark.parametrize("value,expected", [("auto", "auto"), (None, "auto"), (3, 3), ("2", 2)])
def test_good_thread_counts(value, expected):
    assert th.check_threads(value) == expected


def test_what_the_user_fixed_is_kept(monkeypatch):
    assert th.fixed_threads(3) == 3
    default = th.default_threads()
    torch.set_num_threads(default)
    assert th.fixed_threads("auto") is None
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert th.fixed_threads("auto") == 1
    monkeypatch.setenv("PYRO_VAE_THREADS", "2")  # read first
    assert th.fixed_threads("auto") == 2
    assert th.fixed_threads(4) == 4  # an explicit count wins over the environment
    monkeypatch.setenv("PYRO_VAE_THREADS", "many")
    with pytest.raises(ConfigError, match="the environment variable PYRO_VAE_THREADS must be"):
        th.fixed_threads("auto")
    monkeypatch.delenv("PYRO_VAE_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(default + 1)  # torch.set_num_threads was called
    assert th.fixed_threads("auto") == default + 1


class FakeMachine:
    """A 2-core machine whose other processes use ``others`` cores: the clocks the share reads."""

    def __init__(self, monkeypatch):
        self.wall = 100.0
        self.busy = 0.0  # seconds of busy CPU on both cores
        self.own = 0.0
        monkeypatch.setattr(th, "_busy_jiffies", lambda cpus: int(self.busy * 100))
        monkeypatch.setattr(th.time, "monotonic", lambda: self.wall)
        monkeypatch.setattr(th.time, "process_time", lambda: self.own)
        monkeypatch.setattr(th, "physical_cores", lambda cpus: 2)

    def run(self, seconds: float, others: float, own: float) -> None:
        self.wall += seconds
        self.busy += seconds * (others + own)
        self.own += seconds * own


def _share(monkeypatch, threads="auto") -> tuple[th.CoreShare, FakeMachine]:
    machine = FakeMachine(monkeypatch)
    torch.set_num_threads(2)
    share = th.CoreShare(threads)
    share._tick = 100
    return share.start(), machine


def test_auto_gives_a_busy_core_up_and_takes_it_back(monkeypatch):
    share, machine = _share(monkeypatch)
    assert share.cap == 2 and torch.get_num_threads() == 2
    machine.run(0.2, others=1.0, own=1.0)
    assert share.poll() == 2  # not yet a whole interval: no look at the machine
    machine.run(0.4, others=0.8, own=1.2)
    assert share.poll() == 1 and torch.get_num_threads() == 1  # a neighbour holds a core
    machine.run(0.6, others=1.0, own=1.0)
    assert share.poll() == 1
    machine.run(0.6, others=0.05, own=1.0)
    assert share.poll() == 2 and torch.get_num_threads() == 2  # it has gone: both cores again
    machine.run(0.6, others=0.25, own=2.0)
    assert share.poll() == 2  # a shell or an editor is not worth a thread
    machine.run(0.6, others=2.0, own=0.5)
    assert share.poll() == 1  # never fewer than one
    share.stop()
    assert torch.get_num_threads() == 2


def test_one_reading_just_past_the_line_is_not_a_neighbour_but_two_are(monkeypatch):
    share, machine = _share(monkeypatch)
    machine.run(0.6, others=0.35, own=1.6)  # a flush, a shell starting: not yet
    assert share.poll() == 2
    machine.run(0.6, others=0.05, own=1.9)
    assert share.poll() == 2
    machine.run(0.6, others=0.4, own=1.6)
    assert share.poll() == 2
    machine.run(0.6, others=0.4, own=1.6)  # the second window in a row: a neighbour
    assert share.poll() == 1
    machine.run(0.6, others=0.1, own=1.0)
    assert share.poll() == 2


def test_a_fixed_count_is_never_adapted(monkeypatch):
    share, machine = _share(monkeypatch, threads=2)
    machine.run(1.0, others=1.0, own=1.0)
    assert share.poll() == 2


def test_ranks_on_one_host_share_its_cores(monkeypatch):
    monkeypatch.setattr(th, "physical_cores", lambda cpus: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert th.CoreShare("auto").cap == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert th.CoreShare("auto").cap == 1


def test_torchrun_own_single_thread_default_is_not_read_as_the_user_choice(monkeypatch):
    """torchrun sets OMP_NUM_THREADS=1 for several processes per host when the user set none;
    the ranks then share the host's cores instead. The user's own count still wins."""
    monkeypatch.setattr(th, "physical_cores", lambda cpus: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)  # what OMP_NUM_THREADS=1 gave torch at start
    share = th.CoreShare("auto")
    assert share.fixed is None and share.cap == 4
    share.start()
    assert torch.get_num_threads() == 4
    share.stop()
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a count torchrun never sets: the user's
    assert th.CoreShare("auto").fixed == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYRO_VAE_THREADS", "1")
    assert th.CoreShare("auto").fixed == 1
    monkeypatch.delenv("PYRO_VAE_THREADS")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")  # not torchrun: OMP_NUM_THREADS=1 is the user's
    assert th.CoreShare("auto").fixed == 1


def test_nested_shares_leave_the_outer_in_charge_and_restore_the_count():
    before = torch.get_num_threads()
    with th.share_cores(1) as outer:
        assert torch.get_num_threads() == 1
        with th.share_cores("auto") as inner:
            assert inner is outer and torch.get_num_threads() == 1
        th.poll()
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc/stat")
def test_a_busy_neighbour_is_seen_and_this_process_own_work_is_not():
    share = th.CoreShare("auto").start()
    try:
        end = time.monotonic() + 0.6
        while time.monotonic() < end:  # this process busy: its own work, not another's
            sum(range(1000))
        alone = share.others()
        neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(1.0)
            share.others()  # the window in which it started
            time.sleep(1.0)
            beside = share.others()
        finally:
            neighbour.kill()
            neighbour.wait()
    finally:
        share.stop()
    assert beside >= 0.6  # a whole core's worth, less scheduling noise
    assert alone < beside  # this process's own busy loop is not counted as another's


@pytest.mark.several_threads
def test_fit_runs_with_the_count_asked_and_restores_torch_count():
    from pyro_vae.data import DataSplits
    from pyro_vae.models import ModelConfig, build_vae
    from pyro_vae.train import TrainConfig, fit

    x = torch.bernoulli(torch.full((40, 6), 0.5), generator=torch.Generator().manual_seed(0))
    data = DataSplits("bits", x[:24], x[24:32], x[32:])
    vae = build_vae(ModelConfig(event_shape=(6,), latent_dim=2, hidden=(4,)))
    seen = []
    torch.set_num_threads(2)
    fit(vae, data, TrainConfig(epochs=2, batch_size=8), progress=False, threads=1,
        epoch_hook=lambda model, history: seen.append(torch.get_num_threads()))  # fmt: skip
    assert seen == [1, 1] and torch.get_num_threads() == 2
    with pytest.raises(ConfigError, match="threads must be 'auto' or a thread count"):
        fit(vae, data, TrainConfig(epochs=1, batch_size=8), progress=False, threads=0)


def _train_argv(out, name, *extra):
    return [
        "train", "--dataset", "digits", "--num-samples", "2", "--no-progress",
        "--epochs", "1", "--output-dir", str(out), "--name", name, *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("command", ["train", "evaluate", "sample", "plot", "parts"])
@pytest.mark.parametrize("value", ["0", "x", "-2"])
def test_every_command_refuses_a_bad_thread_count_in_one_line(capsys, command, value):
    from pyro_vae import cli

    with pytest.raises(SystemExit) as info:
        cli.main([command, "--threads", value])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threads must be 'auto' or a thread count from 1 to 1024" in err[0]


@pytest.mark.several_threads
def test_the_command_trains_with_the_count_asked_resumes_with_another_and_restores(
    tmp_path, monkeypatch
):
    import pyro_vae.train.loop as loop
    from pyro_vae import cli

    seen = []
    run_epochs = loop.run_epochs

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return run_epochs(*args, **kwargs)

    monkeypatch.setattr(loop, "run_epochs", recording)
    torch.set_num_threads(2)
    assert cli.main(_train_argv(tmp_path, "a", "--threads", "1")) == 0
    assert torch.get_num_threads() == 2
    argv = ["train", "--resume", str(tmp_path / "a"), "--epochs", "2", "--no-progress"]
    assert cli.main([*argv, "--threads", "2"]) == 0
    assert seen == [1, 2] and torch.get_num_threads() == 2


@pytest.mark.several_threads
def test_one_thread_each_runs_tasks_at_once_on_one_thread_each_and_restores_the_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        barrier = threading.Barrier(2, timeout=30)  # both tasks must be running at once

        def task(i):
            barrier.wait()
            return i, torch.get_num_threads(), torch.is_grad_enabled(), th.parallel_threads()

        with torch.no_grad():  # the caller's grad mode reaches the tasks
            got = th.one_thread_each([functools.partial(task, i) for i in range(2)])
        assert got == [(0, 1, False, 1), (1, 1, False, 1)]  # no nested parallel tasks
        assert torch.get_num_threads() == 2 and th.parallel_threads() == 2
        # the count new threads start with is the caller's again
        seen = []
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert seen == [2]
    finally:
        torch.set_num_threads(before)


@pytest.mark.several_threads
def test_one_thread_each_raises_a_task_error_after_every_task_has_ended():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    ended = []

    def fails():
        raise ValueError("task failed")

    def slow():
        time.sleep(0.3)
        ended.append(True)

    try:
        with pytest.raises(ValueError, match="task failed"):
            th.one_thread_each([fails, slow])
        assert ended == [True] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.several_threads
@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_one_thread_each_works_in_a_forked_child_of_a_process_that_used_it():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert th.one_thread_each([lambda: 1, lambda: 2]) == [1, 2]  # the parent's workers
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child has none of its parent's threads
            try:
                os.write(write, repr(th.one_thread_each([lambda: 3, lambda: 4])).encode())
            finally:
                os._exit(0)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(read) as pipe:
            assert pipe.read() == "[3, 4]" and status == 0
    finally:
        torch.set_num_threads(before)
