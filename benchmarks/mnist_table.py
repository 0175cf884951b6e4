"""The published MNIST table, reproduced: each row trained by the library and by an
independent plain-PyTorch twin (``benchmarks/mnist_twins.py``), at a stated budget.

Rows (:data:`ROWS`): Burda et al. (2016) Table 1 (VAE and IWAE, one and two stochastic
layers), Tomczak & Welling (2018) (one-layer VAE with the standard prior and with the
VampPrior) and Kingma et al. (2014) (M2 with 100 labels). Each row uses its paper's
architecture, objective, batch size and learning-rate schedule (see each :class:`Row`).

Data: the MNIST split the papers use (``python ../shared/data/make_mnist.py mnist.npz``:
50,000 / 10,000 / 10,000), read by the library through ``--dataset PATH`` as any ``.npz``.
Training binarizes every batch afresh (dynamic binarization); every score uses one fixed
binarization of the test images (seed :data:`TEST_BINARIZE_SEED`, the library's evaluation
binarization), the same tensor for the library and the twin, so their difference is paired.

Every ``--every`` epochs both sides are scored on the first ``--curve-points`` test images
with K = ``--curve-k`` importance samples (the learning curves); at the end of the budget on
the first ``--test-points`` test images with K = ``--k`` (5,000 as in the papers). Each side
of each row keeps its state under ``--out/<row>/``: a killed run continues where its last
checkpoint was (the library's run directory; the twin's atomic state file) and never redoes
a scored point.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/mnist_table.py --mnist mnist.npz \\
        --rows vae_1l vamp --budget 300 --side lib          # one process per side and row
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/mnist_table.py --mnist mnist.npz \\
        --rows vae_1l vamp --budget 300 --side twin
    PYTHONPATH=. python benchmarks/mnist_table.py --mnist mnist.npz --report  # table, figures

``--report`` writes ``benchmarks/mnist_table.json``, ``benchmarks/mnist_table.md`` and one
learning-curve figure per row (``benchmarks/figures/mnist_<row>.png``) with the published
figure as a horizontal line. Nothing is scaled toward the published figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from pyro_vae.data import eval_data, load_dataset
from pyro_vae.data.binarize import BINARIZE_SEED, binarize_splits
from pyro_vae.data.files import write_atomically
from pyro_vae.data.splits import DataSplits
from pyro_vae.models import ModelConfig, build_model
from pyro_vae.runs import RunDir, configured_for_data
from pyro_vae.runs.metrics import score
from pyro_vae.train import TrainConfig, fit
from pyro_vae.train.semisupervised import choose_labelled

HERE = Path(__file__).resolve().parent

#: Seed of the one fixed binarization of the test images every score uses.
TEST_BINARIZE_SEED = BINARIZE_SEED
#: Epochs the papers train for: Burda et al.'s 3^0 + ... + 3^7 passes; Tomczak & Welling's
#: at most 2,000 with early stopping (look-ahead 50); Kingma et al. do not state theirs.
BURDA_EPOCHS = 3280
BURDA = "Burda et al. 2016, Table 1"
TOMCZAK = "Tomczak & Welling 2018, Table 2"
KINGMA = "Kingma et al. 2014, Table 1"


@dataclass(frozen=True)
class Row:
    """One row of the table: the library's model and training settings, the twin's row name
    (:data:`mnist_twins.ROWS`), the published figure and where it comes from."""

    label: str
    source: str
    published: float
    architecture: str
    model: dict[str, Any]
    train: dict[str, Any]
    paper_epochs: int | None
    metric: str = "log_likelihood"  # or "test_error" (M2)
    twin: str = ""
    #: ``dynamic``: a fresh binarization of every training batch, the test images scored in
    #: one fixed binarization; ``static``: one fixed binarization of every split (the
    #: statically binarized MNIST of Larochelle & Murray 2011 is such a draw), trained on.
    binarize: str = "dynamic"
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_BURDA_1L = {"latent_dim": 50, "hidden": (200, 200), "arch_options": {"activation": "tanh"}}
_BURDA_2L = {"latent_dim": 50, "kind": "hvae", "kind_options": {"preset": "iwae"}}
_BURDA_TRAIN = {"batch_size": 20, "lr": 1e-3, "lr_schedule": "iwae", "adam_eps": 1e-4}
_TOMCZAK = {"latent_dim": 40, "hidden": (300, 300), "arch_options": {"activation": "gated"}}
_TOMCZAK_TRAIN = {"batch_size": 100, "lr": 5e-4, "warmup": "linear", "warmup_epochs": 100.0}

ROWS: dict[str, Row] = {
    "vae_1l": Row(
        "VAE, 1 stochastic layer, k=1", BURDA, -86.76, "784-200-200-50, tanh",
        _BURDA_1L, {**_BURDA_TRAIN, "objective": "elbo"}, BURDA_EPOCHS, twin="vae_1l",
    ),
    "iwae5_1l": Row(
        "IWAE k=5, 1 layer", BURDA, -85.54, "784-200-200-50, tanh",
        _BURDA_1L, {**_BURDA_TRAIN, "objective": "iwae", "num_particles": 5}, BURDA_EPOCHS,
        twin="iwae5_1l",
    ),
    "iwae50_1l": Row(
        "IWAE k=50, 1 layer", BURDA, -84.78, "784-200-200-50, tanh",
        _BURDA_1L, {**_BURDA_TRAIN, "objective": "iwae", "num_particles": 50}, BURDA_EPOCHS,
        twin="iwae50_1l",
    ),
    "vae_2l": Row(
        "VAE, 2 stochastic layers, k=1", BURDA, -85.33, "784-200-200-100 / 100-100-50, tanh",
        _BURDA_2L, {**_BURDA_TRAIN, "objective": "elbo"}, BURDA_EPOCHS, twin="vae_2l",
    ),
    "iwae50_2l": Row(
        "IWAE k=50, 2 layers", BURDA, -82.90, "784-200-200-100 / 100-100-50, tanh",
        _BURDA_2L, {**_BURDA_TRAIN, "objective": "iwae", "num_particles": 50}, BURDA_EPOCHS,
        twin="iwae50_2l",
    ),
    "vae_gated": Row(
        "VAE, standard prior", TOMCZAK, -88.56, "784-300-300-40, gated",
        _TOMCZAK, _TOMCZAK_TRAIN, 2000, twin="vae_gated", binarize="static",
        notes="statically binarized MNIST in the paper; its 2,000 epochs are a maximum "
        "(early stopping, look-ahead 50)",
    ),
    "vamp": Row(
        "VAE, VampPrior (500 pseudo-inputs)", TOMCZAK, -85.57, "784-300-300-40, gated",
        {**_TOMCZAK, "prior": "vamp",
         "prior_options": {"num_pseudo_inputs": 500, "init_mean": 0.05, "init_std": 0.01}},
        _TOMCZAK_TRAIN, 2000, twin="vamp", binarize="static",
        notes="statically binarized MNIST in the paper; its 2,000 epochs are a maximum "
        "(early stopping, look-ahead 50)",
    ),
    "m2": Row(
        "M2, 100 labels", KINGMA, 0.1197, "784-500-50 (one hidden layer of 500, softplus)",
        {"latent_dim": 50, "hidden": (500,), "kind": "m2",
         "kind_options": {"labels_per_class": 10, "alpha": 50.0, "classifier_hidden": (500,)}},
        {"batch_size": 100, "lr": 3e-4}, None, metric="test_error", twin="m2",
        notes="test classification error (fraction), not nats",
    ),
}  # fmt: skip


# --------------------------------------------------------------------------- state files


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON atomically (:func:`pyro_vae.data.files.write_atomically`)."""
    write_atomically(path, lambda f: f.write(json.dumps(value, indent=1).encode()))


def read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


# --------------------------------------------------------------------------- data


def load(mnist: Path, binarize: str) -> tuple[DataSplits, torch.Tensor, torch.Tensor]:
    """The library's splits (read as any user's ``.npz``), the twin's training images and the
    fixed binarization of the test images both sides are scored on.

    ``dynamic``: the twin reads the paper's intensities x / 256 with NumPy alone and
    binarizes each batch itself. ``static``: the library's one seeded binarization of every
    split (seeds ``TEST_BINARIZE_SEED`` + 0, 1, 2 for train, validation, test), trained on by
    both sides.
    """
    data = load_dataset(str(mnist))
    if tuple(data.train.shape) != (50000, 784) or tuple(data.test.shape) != (10000, 784):
        raise SystemExit(f"{mnist} is not the 50,000 / 10,000 / 10,000 split of make_mnist.py")
    if binarize == "static":
        data = binarize_splits(data, "static", TEST_BINARIZE_SEED)
        return data, data.train, data.test
    with np.load(mnist, allow_pickle=False) as f:
        twin_train = torch.from_numpy(f["x_train"].astype(np.float32) / 256.0)
    test_bin = eval_data(build_model(ModelConfig((784,))), data.test)
    return data, twin_train, test_bin


def with_valid(data: DataSplits, n: int) -> DataSplits:
    """``data`` with only the first ``n`` validation points: the fit loop scores the whole
    validation split after every epoch, which nothing here reads beyond the curve."""
    labels = {s: (y[:n] if s == "valid" else y) for s, y in data.labels.items()}
    return DataSplits(data.name, data.train, data.valid[:n], data.test, labels=labels)


def with_test(data: DataSplits, x: torch.Tensor, n: int) -> DataSplits:
    """``data`` whose test split is the first ``n`` (already binarized) test images."""
    labels = {s: y for s, y in data.labels.items() if s != "test"}
    if "test" in data.labels:
        labels["test"] = data.labels["test"][:n]
    return DataSplits(data.name, data.train, data.valid, x[:n], labels=labels)


# --------------------------------------------------------------------------- one side


class LibrarySide:
    """A row trained through the library's Python API (``build_model``, ``fit``), scored by
    :func:`pyro_vae.runs.metrics.score` (``pyro-vae evaluate``'s scorer)."""

    name = "lib"

    def __init__(self, row: Row, data: DataSplits, folder: Path, seed: int, device: str):
        self.row, self.data, self.seed, self.device = row, data, seed, device
        self.config = configured_for_data(ModelConfig(event_shape=(784,), **row.model), data)
        self.run = RunDir(folder / "run")
        self.run.path.mkdir(parents=True, exist_ok=True)
        pyro.set_rng_seed(seed)
        self.model = build_model(self.config)
        self.epoch = 0
        self.seconds = 0.0
        if self.run.has_checkpoint():
            self.train_to(None)

    def train_to(self, epochs: int | None) -> None:
        resume = self.run.has_checkpoint()
        if epochs is None:  # restore the checkpoint's epoch only
            epochs = max(1, len(read_metrics(self.run.path)))
        tc = TrainConfig(epochs=epochs, seed=self.seed, **self.row.train)
        pyro.set_rng_seed(self.seed)
        result = fit(self.model, self.data, tc, self.run, self.config, progress=False,
                     resume=resume, device=self.device)  # fmt: skip
        self.epoch = result.epochs
        self.seconds = result.history[-1]["seconds"] if result.history else 0.0

    def scores(self, x: torch.Tensor, k: int, n: int) -> dict[str, Any]:
        pyro.set_rng_seed(self.seed)
        if self.row.metric == "test_error":
            self.model.eval()
            with torch.no_grad():
                pred = self.model.classify(x).argmax(-1)
            return error_scores(pred, self.data.labels["test"][: len(x)])
        ll = score(self.model, with_test(self.data, x, n), num_samples=k, batch_size=10)
        return ll_scores(ll.per_example, ll.elbo_per_example, k)


def read_metrics(path: Path) -> list[dict]:
    f = path / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


class TwinSide:
    """A row trained and scored by the plain-PyTorch twin (``mnist_twins.Twin``)."""

    name = "twin"

    def __init__(self, row: Row, data: DataSplits, twin_train: torch.Tensor, folder: Path,
                 seed: int):  # fmt: skip
        self.row, self.seed, self.data = row, seed, data
        self.path = folder / "twin.pt"
        sys.path.insert(0, str(HERE))
        from mnist_twins import Twin  # a plain-PyTorch module beside this one

        extra: dict[str, Any] = {}
        if row.metric == "test_error":
            per_class = row.model["kind_options"]["labels_per_class"]
            extra = {
                "y_train": data.labels["train"],
                "labelled": choose_labelled(data.labels["train"], per_class, seed),
            }
        if self.path.exists():
            self.twin = Twin.load(self.path, twin_train, **extra)
        else:
            self.twin = Twin(row.twin, seed, twin_train, **extra)

    @property
    def epoch(self) -> int:
        return self.twin.epoch

    @property
    def seconds(self) -> float:
        return self.twin.seconds

    def train_to(self, epochs: int) -> None:
        self.twin.train_to(epochs)
        self.twin.save(self.path)

    def scores(self, x: torch.Tensor, k: int, n: int) -> dict[str, Any]:
        torch.manual_seed(self.seed)
        if self.row.metric == "test_error":
            y = self.data.labels["test"][: len(x)]
            e = self.twin.test_error(x, y)
            return {"test_error": e, "stderr": math.sqrt(e * (1 - e) / len(y)), "points": len(y)}
        log_px, elbo = self.twin.log_likelihood(x[:n], k)
        return ll_scores(log_px, elbo, k)


def ll_scores(log_px: torch.Tensor, elbo: torch.Tensor, k: int) -> dict[str, Any]:
    n = len(log_px)
    return {
        "log_likelihood": float(log_px.mean()),
        "stderr": float(log_px.std() / math.sqrt(n)) if n > 1 else float("nan"),
        "elbo": float(elbo.mean()),
        "per_example": [round(float(v), 4) for v in log_px],
        "points": n,
        "k": k,
    }


def error_scores(pred: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    e = float((pred != y).double().mean())
    return {"test_error": e, "stderr": math.sqrt(e * (1 - e) / len(y)), "points": len(y)}


def run_side(side, row_name: str, folder: Path, x_test: torch.Tensor, args) -> None:
    """Train ``side`` to the budget, scoring the curve every ``args.every`` epochs and the
    final figure at the end; every result is written before the next epoch starts."""
    results_path = folder / f"{side.name}.json"
    results = read_json(results_path, {"curve": {}, "final": None})
    row = ROWS[row_name]
    targets = sorted({*range(args.every, args.budget + 1, args.every), args.budget})
    curve_n, final_n = args.curve_points, args.test_points
    if row.metric == "test_error":
        curve_n = final_n = len(x_test)  # classifying all test images is cheap
    for target in targets:
        if side.epoch < target:
            side.train_to(target)
        if str(target) not in results["curve"]:
            start = time.perf_counter()
            s = side.scores(x_test[:curve_n], args.curve_k, curve_n)
            s.pop("per_example", None)
            s["seconds_train"] = side.seconds
            s["seconds_score"] = time.perf_counter() - start
            results["curve"][str(target)] = s
            write_json(results_path, results)
            shown = s.get("log_likelihood", s.get("test_error"))
            print(f"{row_name} {side.name} epoch {target}: {shown:.4f}", flush=True)
    final = results.get("final")
    if final is None or final["epoch"] != args.budget or final["points"] != final_n:
        start = time.perf_counter()
        s = side.scores(x_test[:final_n], args.k, final_n)
        s.update(epoch=args.budget, seconds_train=side.seconds,
                 seconds_score=time.perf_counter() - start)  # fmt: skip
        results["final"] = s
        results["machine"] = machine()
        write_json(results_path, results)
        print(f"{row_name} {side.name} final: {s.get('log_likelihood', s.get('test_error'))}")


#: The device the sides ran on, in words (set from ``--device`` in :func:`main`).
DEVICE_NAME = ["cpu"]


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": DEVICE_NAME[0],
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


# --------------------------------------------------------------------------- report


def report(out: Path, args) -> dict[str, Any]:
    """Assemble the table from the rows' result files; draw one curve figure per row."""
    table = {}
    for name, row in ROWS.items():
        lib = read_json(out / name / "lib.json", None)
        twin = read_json(out / name / "twin.json", None)
        if lib is None and twin is None:
            continue
        entry: dict[str, Any] = {
            "label": row.label, "source": row.source, "published": row.published,
            "architecture": row.architecture, "paper_epochs": row.paper_epochs,
            "metric": row.metric, "notes": row.notes, "train": row.train,
            "binarize": row.binarize,
            "model": row.model,
        }  # fmt: skip
        for side_name, side in (("lib", lib), ("twin", twin)):
            if side is None:
                continue
            final = side.get("final")
            for point in [*side["curve"].values(), *([final] if final else [])]:
                if "test_error" in point and "stderr" not in point:  # binomial standard error
                    e, n = point["test_error"], point["points"]
                    point["stderr"] = math.sqrt(e * (1 - e) / n)
            entry[side_name] = {
                "curve": side["curve"],
                "final": None if final is None else {
                    k: v for k, v in final.items() if k != "per_example"},
                "machine": side.get("machine"),
            }  # fmt: skip
        lf = (lib or {}).get("final")
        tf = (twin or {}).get("final")
        if lf and tf and "per_example" in lf and "per_example" in tf:
            # the same test images on both sides: the first n of each side's final score
            n = min(len(lf["per_example"]), len(tf["per_example"]))
            a, b = torch.tensor(lf["per_example"][:n]), torch.tensor(tf["per_example"][:n])
            if n > 1:
                d = a - b
                entry["paired_difference"] = {
                    "mean": float(d.mean()), "stderr": float(d.std() / math.sqrt(len(d))),
                    "points": len(d),
                }  # fmt: skip
        table[name] = entry
        plot_row(name, entry, HERE / "figures" / f"mnist_{name}.png")
    write_json(HERE / "mnist_table.json", table)
    (HERE / "mnist_table.md").write_text(markdown(table))
    return table


def markdown(table: dict[str, Any]) -> str:
    head = (
        "| row | source | published | library | twin | library - twin (paired) | "
        "difference from paper | epochs (paper) | train wall time (library / twin) |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for e in table.values():
        lib = (e.get("lib") or {}).get("final")
        twin = (e.get("twin") or {}).get("final")
        err = e["metric"] == "test_error"

        def show(f, err=err):
            if f is None:
                return "running"
            if err:
                return f"{100 * f['test_error']:.2f}% +- {100 * f['stderr']:.2f}%"
            return f"{f['log_likelihood']:.2f} +- {f['stderr']:.2f} ({f['points']})"

        pub = f"{100 * e['published']:.2f}%" if err else f"{e['published']:.2f}"
        pd = e.get("paired_difference")
        paired = f"{pd['mean']:+.2f} +- {pd['stderr']:.2f} ({pd['points']})" if pd else ""
        if lib is None:
            diff = ""
        elif err:
            diff = f"{100 * (lib['test_error'] - e['published']):+.2f} points"
        else:
            diff = f"{lib['log_likelihood'] - e['published']:+.2f}"
        epochs = f"{lib['epoch'] if lib else '-'} ({e['paper_epochs'] or 'not stated'})"
        wall = " / ".join(f"{f['seconds_train'] / 60:.0f} min" if f else "-" for f in (lib, twin))
        lines.append(
            f"| {e['label']} | {e['source']} | {pub} | {show(lib)} | {show(twin)} | "
            f"{paired} | {diff} | {epochs} | {wall} |"
        )
    machines = sorted(
        {
            f"{m['processor']}, {m['cpus']} CPUs, {m['threads']} thread(s), device {m['device']}, "
            f"torch {m['torch']}, pyro {m['pyro']}, {m['date']}"
            for e in table.values()
            for side in ("lib", "twin")
            if (m := (e.get(side) or {}).get("machine"))
        }
    )
    foot = (
        "\nlog p(x): importance sampling with K = 5000 (error: the classifier's test error), "
        "+- standard error over the test images (their number in parentheses, the first n "
        "of the test split); the paired difference is over the images both sides scored."
        + "".join(f"\nmachine: {m}" for m in machines)
    )
    return head + "\n".join(lines) + "\n" + foot + ("\n" if foot else "")


def plot_row(name: str, entry: dict[str, Any], path: Path) -> None:
    """Test score against epochs for both sides (the curve points, and the final score with
    its standard error), the published figure as a line, the learning-rate stage boundaries
    of the ``iwae`` schedule and the end of a KL warm-up as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    err = entry["metric"] == "test_error"
    key = "test_error" if err else "log_likelihood"
    unit = 100 if err else 1
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    curve_note = final_note = ""
    finals: list[str] = []
    last = 0
    for side, style, color in (("lib", "-o", "C0"), ("twin", "--s", "C1")):
        s = entry.get(side)
        if not s or not s["curve"]:
            continue
        epochs = sorted(int(e) for e in s["curve"])
        last = max(last, epochs[-1])
        values = [s["curve"][str(e)][key] * unit for e in epochs]
        label = "pyro_vae" if side == "lib" else "plain PyTorch twin"
        ax.plot(epochs, values, style, ms=3, color=color, label=label)
        point = s["curve"][str(epochs[-1])]
        curve_note = f"curve: first {point['points']} test images" + (
            "" if err else f", K={point.get('k')}"
        )
        final = s.get("final")
        if final:
            ax.errorbar(
                final["epoch"], final[key] * unit, yerr=final["stderr"] * unit, fmt="*",
                ms=11, color=color, capsize=3, label=f"{label}, final",
            )  # fmt: skip
            finals.append(f"{label} first {final['points']}")
            final_note = f"final: {', '.join(finals)} test images" + (
                "" if err else f", K={final.get('k')}"
            )
    train = entry["train"]
    if train.get("lr_schedule") == "iwae":
        first = True
        for boundary in (1, 4, 13, 40, 121, 364, 1093):  # last epoch of stages 0..6
            if boundary < last:
                ax.axvline(boundary + 0.5, color="0.8", lw=0.8, zorder=0,
                           label="learning-rate stage" if first else None)  # fmt: skip
                first = False
    if train.get("warmup") == "linear":
        end = train["warmup_epochs"]
        ax.axvspan(0, min(end, last), color="0.92", zorder=0,
                   label=f"KL warm-up (to epoch {end:g})")  # fmt: skip
    pub = entry["published"] * unit
    ax.axhline(pub, color="k", ls=":", label=f"published ({entry['source']}): {pub:.2f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)" if err else "test log p(x), nats (importance sampling)")
    paper = entry["paper_epochs"]
    ax.set_title(
        f"{entry['label']}" + (f" (paper: {paper} epochs)" if paper else ""), fontsize=10
    )
    ax.text(0.01, 0.99, "\n".join(n for n in (curve_note, final_note) if n),
            transform=ax.transAxes, ha="left", va="top", fontsize=7, color="0.3")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mnist", type=Path, required=True, help="mnist.npz of make_mnist.py")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--side", choices=["lib", "twin", "both"], default="both")
    p.add_argument("--budget", type=int, default=300, help="epochs per row")
    p.add_argument("--every", type=int, default=10, help="epochs between curve points")
    p.add_argument("--curve-points", type=int, default=500)
    p.add_argument("--curve-k", type=int, default=500)
    p.add_argument("--test-points", type=int, default=10000)
    p.add_argument("--k", type=int, default=5000, help="importance samples of the final score")
    p.add_argument(
        "--valid-points",
        type=int,
        default=1000,
        help="validation points the fit loop scores after each epoch",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--out", type=Path, default=HERE / "mnist_table_runs")
    p.add_argument("--report", action="store_true", help="only assemble table and figures")
    args = p.parse_args(argv)
    if args.report:
        print(markdown(report(args.out, args)))
        return
    if args.device.startswith("cuda"):
        DEVICE_NAME[0] = torch.cuda.get_device_name(torch.device(args.device))
    loaded: dict[str, tuple] = {}
    for name in args.rows:
        row = ROWS[name]
        if row.binarize not in loaded:
            data, twin_train, x_test = load(args.mnist, row.binarize)
            loaded[row.binarize] = with_valid(data, args.valid_points), twin_train, x_test
        data, twin_train, x_test = loaded[row.binarize]
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        sides = ["lib", "twin"] if args.side == "both" else [args.side]
        for side_name in sides:
            if side_name == "lib":
                side = LibrarySide(row, data, folder, args.seed, args.device)
                run_side(side, name, folder, x_test.to(args.device), args)
            else:
                side = TwinSide(row, data, twin_train.to(args.device), folder, args.seed)
                run_side(side, name, folder, x_test, args)


if __name__ == "__main__":
    main()
