"""Runs under torchrun (two CPU processes, gloo): the files of a one-process run, written by
rank 0, and a resume that continues exactly; a streamed training split trains like one in
memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from pyro_vae import ModelConfig, build_vae
from pyro_vae.data import load_array_file
from pyro_vae.data.streaming import load_streaming
from pyro_vae.train import TrainConfig, fit

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "16", "--num-samples", "20", "--no-progress", "--device", "cpu"]


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    cmd += ["--standalone", "--tee", "3", "-m", "pyro_vae", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    # on failure, show what each rank printed (prefixed "[rank]:"), not only the launcher's
    ranks = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("[")]
    assert proc.returncode == 0, "\n".join(ranks[-40:]) + "\n" + proc.stderr[-1500:]
    return proc


def _metrics(run) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def test_a_two_process_run_has_a_one_process_runs_files_and_resumes_exactly(tmp_path):
    out = str(tmp_path)
    _torchrun("train", *TINY, "--epochs", "3", "--output-dir", out, "--name", "straight")
    _torchrun("train", *TINY, "--epochs", "2", "--output-dir", out, "--name", "resumed")
    _torchrun("train", "--resume", str(tmp_path / "resumed"), "--epochs", "3", "--no-progress")
    from pyro_vae.cli import main

    assert main(["train", *TINY, "--epochs", "1", "--output-dir", out, "--name", "single"]) == 0
    files = {p.name for p in (tmp_path / "single").iterdir()}
    assert {p.name for p in (tmp_path / "straight").iterdir()} == files
    straight, resumed = _metrics(tmp_path / "straight"), _metrics(tmp_path / "resumed")
    assert len(straight) == 3  # one line per epoch: only rank 0 appended
    assert straight == resumed
    config = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert config["train"]["epochs"] == 3


def test_resuming_a_two_process_run_in_one_process_is_refused(tmp_path):
    out = str(tmp_path)
    _torchrun("train", *TINY, "--epochs", "1", "--output-dir", out, "--name", "r")
    from pyro_vae.cli import main

    assert main(["train", "--resume", str(tmp_path / "r"), "--epochs", "2"]) == 2


def test_a_streamed_training_split_gives_the_in_memory_metrics(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", (rng.random((120, 6)) > 0.5).astype(np.float32))
    config = TrainConfig(epochs=2, batch_size=16, valid_num_samples=3)
    histories = []
    for data in (load_array_file(tmp_path / "x.npy"), load_streaming(tmp_path / "x.npy")):
        torch.manual_seed(0)
        vae = build_vae(ModelConfig(event_shape=(6,), hidden=(8,)))
        result = fit(vae, data, config, progress=False)
        histories.append([{k: v for k, v in r.items() if k != "seconds"} for r in result.history])
    assert histories[0] == histories[1]


def test_a_rank_that_never_arrives_is_one_line_after_the_bounded_wait(tmp_path):
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        "PYRO_VAE_RENDEZVOUS_TIMEOUT": "2", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    argv = ["train", *TINY, "--epochs", "1", "--output-dir", str(tmp_path), "--name", "r"]
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_vae", *argv], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"rendezvous 127.0.0.1:{port} within 2 s" in lines[0]
    assert "PYRO_VAE_RENDEZVOUS_TIMEOUT=SECONDS" in lines[0]
    assert not (tmp_path / "r").exists()
