"""One vs two stochastic layers, M2 with 100 labels, and the conditional VAE's figures.

Rows, each trained through the library's Python API (``build_model``, ``fit``) and scored
with ``log_likelihood`` (importance sampling, K samples, +- standard error over test points)
and ``latent_usage`` (active units per layer):

- ``layers``: on every data set given, the one-layer VAE (784-200-200-50, tanh-free MLP of the
  library) and the two-layer ``hvae --preset iwae`` (Burda et al. 2016: 784-200-200-100 /
  100-100-50, tanh), same objective (ELBO), optimizer, batch size and number of epochs.
- ``m2``: M2 on the MNIST split with ``labels_per_class`` labels per class, test error after
  every epoch (the learning curve), beside a classifier of the same architecture trained on
  the same labelled points alone (best validation step).
- ``cvae``: class-conditional samples and quadrant completions on MNIST, written as figures.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/structured_models.py \\
        --mnist /path/to/mnist.npz --rows layers m2 cvae --epochs 10 --test-points 2000

Writes ``benchmarks/structured_models.json`` and the figures under ``benchmarks/figures/``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import pyro
import torch

from pyro_vae.analysis import plots
from pyro_vae.analysis.run_figures import draw
from pyro_vae.data import dynamic_binarize, eval_data, load_dataset
from pyro_vae.infer import latent_usage, log_likelihood
from pyro_vae.models import ModelConfig, build_model
from pyro_vae.runs import RunDir, configured_for_data
from pyro_vae.train import TrainConfig, fit
from pyro_vae.train.semisupervised import choose_labelled

HERE = Path(__file__).resolve().parent
FIGURES = HERE / "figures"


def score(model, data, k: int, n: int) -> dict:
    """IS log-likelihood (K=k) and ELBO on the first n test points, and active units."""
    model.eval()
    x = eval_data(model, data.test[:n])
    with torch.no_grad():
        ll = log_likelihood(model.model, model.guide, x, num_samples=k, batch_size=50)
        usage = latent_usage(model.model, model.guide, x[:1000])
    return {
        "per_example": ll.per_example.tolist(),
        "log_likelihood": ll.mean,
        "log_likelihood_stderr": ll.stderr,
        "elbo": ll.elbo,
        "elbo_stderr": ll.elbo_stderr,
        "test_points": int(x.shape[0]),
        "num_samples": k,
        "active_units": {s: int(u.active.sum()) for s, u in usage.sites.items()},
        "units": {s: int(u.active.numel()) for s, u in usage.sites.items()},
        "kl": usage.kl,
        "mutual_information": usage.mutual_information,
    }


def train(config: ModelConfig, data, train_config: TrainConfig, run=None, resume=False):
    pyro.set_rng_seed(train_config.seed)
    model = build_model(config)
    start = time.perf_counter()
    fit(model, data, train_config, run, config, progress=False, resume=resume)
    return model, time.perf_counter() - start


def layers_rows(name: str, data, args) -> list[dict]:
    """The one-layer VAE and the two-layer IWAE architecture at equal epochs."""
    tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    shape = data.event_shape
    rows = []
    for label, config in (
        ("VAE, 1 stochastic layer (784-200-200-50)", ModelConfig(shape, 50, (200, 200))),
        (
            "HVAE, 2 stochastic layers (iwae preset: 784-200-200-100 / 100-100-50, tanh)",
            ModelConfig(shape, 50, (200, 200), kind="hvae", kind_options={"preset": "iwae"}),
        ),
    ):
        model, seconds = train(config, data, tc)
        row = {"data": name, "model": label, "epochs": args.epochs, "train_seconds": seconds}
        row.update(score(model, data, args.k, args.test_points))
        print(json.dumps({k: v for k, v in row.items() if k != "per_example"}), flush=True)
        rows.append(row)
    # the same test images score both models: their paired difference is the precise figure
    diff = torch.tensor(rows[1]["per_example"]) - torch.tensor(rows[0]["per_example"])
    rows[1]["paired_difference"] = float(diff.mean())
    rows[1]["paired_difference_stderr"] = float(diff.std() / len(diff) ** 0.5)
    print(json.dumps({"paired": rows[1]["paired_difference"],
                      "stderr": rows[1]["paired_difference_stderr"]}), flush=True)  # fmt: skip
    return rows


def classifier_baseline(m2_config: ModelConfig, data, index: torch.Tensor, args) -> dict:
    """M2's classifier architecture trained on the labelled points alone (cross-entropy,
    Adam, full batch, fresh binarization each step); test error at the best validation step."""
    pyro.set_rng_seed(args.seed)
    net = build_model(m2_config).classifier
    x, y = data.train[index], data.labels["train"][index]
    valid = eval_data(build_model(m2_config), data.valid)
    test = eval_data(build_model(m2_config), data.test)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    best = (2.0, 1.0, 0)
    for step in range(1, args.classifier_steps + 1):
        loss = torch.nn.functional.cross_entropy(net(dynamic_binarize(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            with torch.no_grad():
                v = float((net(valid).argmax(-1) != data.labels["valid"]).double().mean())
                t = float((net(test).argmax(-1) != data.labels["test"]).double().mean())
            if v < best[0]:
                best = (v, t, step)
    return {"valid_error": best[0], "test_error": best[1], "best_step": best[2]}


def m2_row(data, args) -> dict:
    """M2 with ``labels_per_class`` labels per class: the test error after every epoch."""
    options = {
        "labels_per_class": args.labels_per_class,
        "alpha": args.alpha,
        "labelled_weight": args.labelled_weight,
    }
    config = ModelConfig(
        data.event_shape, args.m2_latent, (500,), kind="m2", kind_options=options
    )
    config = configured_for_data(config, data)
    curve = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp) / "m2")
        run.create()
        for epoch in range(1, args.m2_epochs + 1):
            tc = TrainConfig(
                epochs=epoch, batch_size=args.batch_size, lr=args.lr, seed=args.seed
            )
            model, _ = train(config, data, tc, run, resume=epoch > 1)
            model.eval()
            with torch.no_grad():
                logits = model.classify(eval_data(model, data.test))
            error = float((logits.argmax(-1) != data.labels["test"]).double().mean())
            record = run.read_metrics()[-1]
            curve.append(
                {"epoch": epoch, "test_error": error, "valid_error": record["valid_error"],
                 "valid_elbo": record["valid_elbo"], "seconds": time.perf_counter() - start}
            )  # fmt: skip
            print(json.dumps(curve[-1]), flush=True)
        labelled = run.read_json(RunDir.CONFIG)["labelled_points"]
    index = choose_labelled(data.labels["train"], args.labels_per_class, args.seed)
    assert index.tolist() == labelled
    baseline = classifier_baseline(config, data, index, args)
    row = {
        "model": f"M2, {args.labels_per_class * 10} labels",
        "alpha": args.alpha,
        "curve": curve,
        "final_test_error": curve[-1]["test_error"],
        "best_valid_epoch": min(curve, key=lambda r: r["valid_error"])["epoch"],
        "classifier_alone": baseline,
    }
    row["test_error_at_best_valid"] = curve[row["best_valid_epoch"] - 1]["test_error"]
    row.update(score(model, data, args.k, args.test_points))
    shown = {k: v for k, v in row.items() if k not in ("curve", "per_example")}
    print(json.dumps(shown), flush=True)
    plot_error_curve(row, FIGURES / "m2_test_error.png")
    return row


def plot_error_curve(row: dict, path: Path) -> Path:
    epochs = [r["epoch"] for r in row["curve"]]
    fig, ax = plots.subplots(figsize=(6, 4), layout="constrained")
    ax.plot(epochs, [100 * r["test_error"] for r in row["curve"]], "o-", label="M2 test error")
    ax.plot(epochs, [100 * r["valid_error"] for r in row["curve"]], "s--", alpha=0.6,
            label="M2 validation error")  # fmt: skip
    alone = 100 * row["classifier_alone"]["test_error"]
    ax.axhline(alone, color="gray", ls=":", label=f"same classifier, labels alone ({alone:.1f}%)")
    ax.axhline(11.97, color="black", ls="-.", label="Kingma et al. 2014, M2 (11.97%)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("classification error (%)")
    ax.set_title(f"{row['model']} on MNIST (50k/10k/10k split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return plots.save_figure(fig, path)


def cvae_rows(data, args) -> list[dict]:
    """Class-conditional samples and quadrant completions on MNIST, each model with a learned
    prior p(z | c) (as Pyro's CVAE example has a prior network of the visible quadrant)."""
    rows = []
    tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    for condition, figure in (("labels", "class_samples"), ("quadrant", "completions")):
        config = ModelConfig(
            data.event_shape, 16, (500, 500), kind="cvae",
            kind_options={"condition_on": condition, "conditional_prior": True},
        )  # fmt: skip
        config = configured_for_data(config, data)
        model, seconds = train(config, data, tc)
        path = draw(figure, model, data, FIGURES / f"cvae_{figure}.png", seed=args.seed)
        model.eval()
        x = eval_data(model, data.test[: args.test_points])
        y = (data.labels["test"][: args.test_points],) if condition == "labels" else ()
        with torch.no_grad():
            ll = log_likelihood(model.model, model.guide, x, *y, num_samples=args.k, batch_size=50)
        row = {
            "model": f"CVAE conditioned on {condition}",
            "epochs": args.epochs,
            "train_seconds": seconds,
            "conditional_log_likelihood": ll.mean,
            "conditional_log_likelihood_stderr": ll.stderr,
            "figure": str(path.relative_to(HERE)) if path else None,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist", type=Path, required=True, help="mnist.npz (make_mnist.py)")
    p.add_argument("--fashion", default="fashion-mnist", help="Fashion-MNIST data set name")
    p.add_argument("--rows", nargs="+", default=["layers", "m2", "cvae"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--m2-epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--test-points", type=int, default=2000)
    p.add_argument("--labels-per-class", type=int, default=10)
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--m2-latent", type=int, default=50, help="M2's latent size (paper: 50)")
    p.add_argument("--labelled-weight", type=float, default=1.0)
    p.add_argument("--classifier-steps", type=int, default=2000)
    p.add_argument("--out", type=Path, default=HERE / "structured_models.json")
    args = p.parse_args()
    FIGURES.mkdir(exist_ok=True)
    mnist = load_dataset(str(args.mnist))
    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    out["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.alpha is None:
        from pyro_vae.models.semisupervised import DEFAULT_ALPHA

        args.alpha = DEFAULT_ALPHA
    if "layers" in args.rows:
        fashion = load_dataset(args.fashion)
        out["layers"] = layers_rows("MNIST", mnist, args) + layers_rows(
            "Fashion-MNIST", fashion, args
        )
    if "m2" in args.rows:
        out["m2"] = m2_row(mnist, args)
    if "cvae" in args.rows:
        out["cvae"] = cvae_rows(mnist, args)
    out["args"] = {k: str(v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
