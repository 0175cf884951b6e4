"""Speed where users run: alone, beside a busy neighbour, two runs at once; and the Python API.

Training: whole ``pyro-vae train`` commands (start-up, training, the end-of-run scoring and
figures), timed from outside, for three models (``digits``: the default command; ``pyro-mlp``:
784-400-50; ``conv``: the conv nets, latent 16; both on 28x28 images), and the digits trained
through the Python API (``digits-python``: a script calling ``fit`` and ``log_likelihood`` as
README does), each under three conditions:

- ``alone``: the command on an otherwise idle machine;
- ``beside``: the same while one CPU-bound neighbour runs (a pure-Python busy loop, started
  half a second before);
- ``two``: two copies started at once (a sweep); the time is the later one's.

and three thread settings: ``auto`` (the library's default, :mod:`pyro_vae.runtime.threads`),
``1`` (``--threads 1``) and ``2`` (``--threads 2``: torch's own default on 2 cores, what every
command did before the library chose). A command that runs past ``--stop-after`` times its
``auto`` alone time is stopped and reported as ``> seconds``. Ratios: ``beside / alone`` (the
target: at most 2.2, a fair share of 2 cores) and ``two / (2 x alone)`` (two at once against one
after the other: at most 1.15), each against the same setting's ``alone``.

Scoring (``--part score``; one process, torch's default threads, Pyro's VAE example networks
784-400-50, ``--images`` random binary images, K = ``--k``): seconds and the share of the same
process's 1024 x 1024 matmul rate (:mod:`benchmarks.likelihood_throughput`'s counting) of

- ``python-api``: ``log_likelihood(vae.model, vae.guide, x)`` as README writes it (the default
  route, fused for the library's own VAE);
- ``cli``: ``pyro_vae.runs.metrics.score``, what ``pyro-vae evaluate`` runs;
- ``traced``: the same call with ``route="traced"``;
- ``pyro-program``: ``log_likelihood`` on a Pyro program written as Pyro's VAE example writes
  it (functions with ``pyro.module``; traced: no faster route knows it);
- ``pyro-vectorized``: Pyro's ``vectorized_importance_weights`` on that program, image by image;
- ``program-arithmetic``: that program's own arithmetic alone, image by image in Pyro's passes
  of K rows: the decoder on K normal draws and the Bernoulli log-density of its logits, with
  no tracing, no encoder and no argument checks. Every route that runs the program computes at
  least this, so its "x Pyro per image" bounds what any traced route can reach;
- ``pyro-program`` and ``pyro-vectorized`` again with K / 10 samples per image.

Run (idle machine: nothing else running), from the repository root:

    python benchmarks/shared_machine.py [--part train,score] [--models digits,pyro-mlp,conv]
        [--settings auto,1,2] [--out benchmarks/shared_machine.json]

Writes the JSON and prints a Markdown table per part.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Per model: the train command's options after ``--dataset`` (28x28 models read the
#: ``.npy`` this script writes) and its epochs, sized to take about 10 s alone.
COMMANDS = {
    "digits": (["--epochs", "40"], None),
    # the same training through the Python API: fit on the digits in a script of its own
    "digits-python": (["--epochs", "40"], "python"),
    "pyro-mlp": (["--epochs", "15", "--latent-dim", "50", "--hidden", "400"], (1, 28, 28)),
    "conv": (["--epochs", "1", "--latent-dim", "16", "--arch", "conv"], (1, 28, 28)),
}
#: Points in the 28x28 data sets (80/10/10 split by the loader).
IMAGES_28 = 3000
CONDITIONS = ("alone", "beside", "two")
NEIGHBOUR = [sys.executable, "-c", "while True: pass"]


def clean_env() -> dict[str, str]:
    """This environment without the variables that fix a thread count."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYRO_VAE_THREADS")}  # fmt: skip
    env["PYTHONPATH"] = str(ROOT)
    return env


def write_images(folder: Path, shape: tuple[int, ...]) -> Path:
    """Random binary images of ``shape`` (the arithmetic does not depend on the pixels)."""
    import numpy as np

    path = folder / f"images_{'x'.join(map(str, shape))}.npy"
    rng = np.random.default_rng(0)
    np.save(path, (rng.random((IMAGES_28, *shape)) < 0.3).astype(np.float32))
    return path


#: ``digits-python``: README's "Use it from Python" training, then scoring (K = 100).
PYTHON_TRAINING = """
import sys
import pyro_vae
from pyro_vae.data import eval_data, load_digits
from pyro_vae.infer import log_likelihood
from pyro_vae.train import TrainConfig, fit

data = load_digits()
vae = pyro_vae.build_vae(pyro_vae.ModelConfig(event_shape=data.event_shape, latent_dim=2))
fit(vae, data, TrainConfig(epochs=int(sys.argv[1])), progress=False, threads=sys.argv[2])
log_likelihood(vae.model, vae.guide, eval_data(vae, data.test), num_samples=100)
"""


def train_command(model: str, data: dict, out: Path, name: str, threads: str) -> list[str]:
    options, shape = COMMANDS[model]
    if shape == "python":
        return [sys.executable, "-c", PYTHON_TRAINING, options[1], threads]
    dataset = ["--dataset", str(data[shape])] if shape else []
    return [
        sys.executable, "-m", "pyro_vae", "train", *dataset, *options, "--threads", threads,
        "--num-samples", "100", "--output-dir", str(out), "--name", name, "--overwrite",
        "--no-progress",
    ]  # fmt: skip


def timed(commands: list[list[str]], limit: float) -> list[float | None]:
    """Start ``commands`` at once; each one's seconds, ``None`` where stopped at ``limit``."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(c, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for c in commands
    ]
    times: list[float | None] = [None] * len(procs)
    while any(t is None and p.poll() is None for t, p in zip(times, procs, strict=True)):
        if time.perf_counter() - start > limit:
            break
        time.sleep(0.05)
        for i, p in enumerate(procs):
            if times[i] is None and p.poll() is not None:
                times[i] = time.perf_counter() - start
    for i, p in enumerate(procs):
        if p.poll() is None:
            p.kill()
            p.wait()
        elif times[i] is None:
            times[i] = time.perf_counter() - start
        if p.returncode not in (0, -9):
            raise SystemExit(f"{' '.join(commands[i])} failed:\n{p.stderr.read().decode()}")
    return times


def run_train(models: list[str], settings: list[str], stop_after: float) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = {s: write_images(folder, s) for _, s in COMMANDS.values() if isinstance(s, tuple)}
        for model in models:
            limit = math.inf
            for threads in settings:
                row: dict = {"model": model, "threads": threads}
                for condition in CONDITIONS:
                    names = ["a", "b"] if condition == "two" else ["a"]
                    commands = [
                        train_command(model, data, folder / "runs", f"{model}-{n}", threads)
                        for n in names
                    ]
                    neighbour = None
                    if condition == "beside":
                        neighbour = subprocess.Popen(NEIGHBOUR)
                        time.sleep(0.5)
                    try:
                        times = timed(commands, limit)
                    finally:
                        if neighbour is not None:
                            neighbour.kill()
                            neighbour.wait()
                    stopped = any(t is None for t in times)
                    row[condition] = limit if stopped else max(times)
                    row[f"{condition}_stopped"] = stopped
                    print(f"{model:9s} threads={threads:4s} {condition:6s} "
                          f"{'>' if stopped else ''}{row[condition]:.1f} s", flush=True)
                if threads == "auto":
                    limit = stop_after * row["alone"]
                row["beside_ratio"] = row["beside"] / row["alone"]
                row["two_ratio"] = row["two"] / (2 * row["alone"])
                rows.append(row)
    return rows


def run_score(images: int, k: int, repeats: int) -> list[dict]:
    """Seconds and share of the matmul rate of each scoring route (see the module docstring)."""
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer.importance import vectorized_importance_weights

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from likelihood_throughput import decoder_flops, matmul_gflops

    from pyro_vae.data import DataSplits
    from pyro_vae.infer import log_likelihood
    from pyro_vae.models import ModelConfig, build_vae
    from pyro_vae.runs.metrics import score

    torch.manual_seed(0)
    vae = build_vae(ModelConfig(event_shape=(1, 28, 28), latent_dim=50, hidden=(400,)))
    vae.eval()
    x = (torch.rand(images, 1, 28, 28) < 0.3).float()
    data = DataSplits("random", x, x, x)
    flops = decoder_flops(vae.decoder, 50) * images * k

    encoder, decoder = vae.encoder, vae.decoder

    def model(x):  # Pyro's VAE example, as its users write it
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 50), 1.0).to_event(1))
            logits = decoder(z).reshape(*z.shape[:-1], -1)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x.reshape(len(x), -1))

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            params = encoder(x)
            loc, scale = params[..., :50], torch.nn.functional.softplus(params[..., 50:])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def per_image():
        for i in range(images):
            vectorized_importance_weights(model, guide, x[i : i + 1], num_samples=k,
                                          max_plate_nesting=1)  # fmt: skip

    def per_image_small():
        for i in range(images):
            vectorized_importance_weights(model, guide, x[i : i + 1], num_samples=k // 10,
                                          max_plate_nesting=1)  # fmt: skip

    flat = x.reshape(images, -1)

    def program_arithmetic():
        for i in range(images):
            z = torch.randn(k, 1, 50)
            logits = decoder(z).reshape(k, 1, -1)
            dist.Bernoulli(logits=logits, validate_args=False).log_prob(flat[i : i + 1]).sum(-1)

    routes = {
        "python-api": lambda: log_likelihood(vae.model, vae.guide, x, num_samples=k),
        "cli": lambda: score(vae, data, num_samples=k),
        "traced": lambda: log_likelihood(vae.model, vae.guide, x, num_samples=k,
                                         route="traced"),  # fmt: skip
        "pyro-program": lambda: log_likelihood(model, guide, x, num_samples=k),
        "pyro-vectorized": per_image,
        "program-arithmetic": program_arithmetic,
        # K / 10: where Pyro's per-call work weighs more than the programs' arithmetic
        "pyro-program K/10": lambda: log_likelihood(model, guide, x, num_samples=k // 10),
        "pyro-vectorized K/10": per_image_small,
    }
    best: dict[str, float] = {}
    rates: list[float] = []
    with torch.no_grad():
        for _ in range(repeats):  # interleaved, so a slow spell of the machine hits all
            for name, call in routes.items():
                start = time.perf_counter()
                call()
                seconds = time.perf_counter() - start
                best[name] = min(best.get(name, math.inf), seconds)
                rates.append(matmul_gflops(seconds=min(max(seconds, 0.5), 10.0)))
    matmul = max(rates)
    rows = []
    for name, seconds in best.items():
        small = name.endswith("K/10")
        work = flops / 10 if small else flops
        rows.append({
            "route": name, "seconds": seconds, "gflops": work / seconds / 1e9,
            "matmul_share": work / seconds / 1e9 / matmul,
            "vs_pyro_vectorized":
                best["pyro-vectorized K/10" if small else "pyro-vectorized"] / seconds,
        })  # fmt: skip
    print(f"matmul {matmul:.1f} GFLOP/s, {torch.get_num_threads()} threads")
    return rows


def markdown(rows: list[dict], part: str) -> str:
    if part == "train":
        lines = [
            "| model | threads | alone s | beside s | beside / alone | two at once s | "
            "two / (2 x alone) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            def cell(c, r=r):
                return f"{'> ' if r[f'{c}_stopped'] else ''}{r[c]:.1f}"

            lines.append(
                f"| {r['model']} | {r['threads']} | {cell('alone')} | {cell('beside')} | "
                f"{r['beside_ratio']:.2f} | {cell('two')} | {r['two_ratio']:.2f} |"
            )
        return "\n".join(lines)
    lines = ["| route | seconds | GFLOP/s | share of matmul rate | x Pyro per image |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['route']} | {r['seconds']:.2f} | {r['gflops']:.1f} | "
            f"{100 * r['matmul_share']:.0f}% | {r['vs_pyro_vectorized']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="train,score")
    parser.add_argument("--models", default=",".join(COMMANDS))
    parser.add_argument("--settings", default="auto,1,2")
    parser.add_argument("--stop-after", type=float, default=4.0)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "shared_machine.json"))
    args = parser.parse_args()
    parts = args.part.split(",")
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "command": " ".join(["python", *sys.argv]),
    }
    if "train" in parts:
        result["train"] = run_train(args.models.split(","), args.settings.split(","),
                                    args.stop_after)  # fmt: skip
        print(markdown(result["train"], "train"))
    if "score" in parts:
        result["score"] = run_score(args.images, args.k, args.repeats)
        print(markdown(result["score"], "score"))
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
