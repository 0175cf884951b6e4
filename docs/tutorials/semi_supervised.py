"""Semi-supervised learning with M2 (Kingma et al. 2014): 10 labels per class of the digits,
the label summed out exactly for every other point, against the same classifier trained on
the labelled points alone.

Run: python docs/tutorials/semi_supervised.py  (outputs go to $PYRO_VAE_TUTORIAL_OUT, default
./semi-supervised-output; PYRO_VAE_TUTORIAL_QUICK=1: a tiny run for the tests)
"""

import os
import tempfile
from pathlib import Path

import pyro
import torch
from matplotlib.figure import Figure

from pyro_vae.data import dynamic_binarize, eval_data, load_digits
from pyro_vae.models import ModelConfig, build_model
from pyro_vae.runs import RunDir, configured_for_data
from pyro_vae.train import TrainConfig, choose_labelled, fit

OUT = Path(os.environ.get("PYRO_VAE_TUTORIAL_OUT", "semi-supervised-output"))
QUICK = os.environ.get("PYRO_VAE_TUTORIAL_QUICK") == "1"
OUT.mkdir(parents=True, exist_ok=True)

data = load_digits()
if QUICK:
    data = data.head(300)
EPOCHS, STEPS = (2, 20) if QUICK else (100, 2000)
PER_CLASS = 3 if QUICK else 10

# M2: y ~ Cat(1/10), z ~ N(0, I), x ~ p(x | z, y); q(y | x) q(z | x, y). The options are the
# kind's own: `pyro-vae train --model m2 --labels-per-class 10 --alpha 0.1`.
config = ModelConfig(
    data.event_shape, latent_dim=8, hidden=(128,), kind="m2",
    kind_options={"labels_per_class": PER_CLASS},
)
config = configured_for_data(config, data)  # num_classes from the labels: 10
x_test, y_test = None, data.labels["test"]


def error(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(-1) != y).double().mean())


# Train one epoch at a time, resuming the run directory, to record the test error per epoch:
# a resumed run continues exactly as an uninterrupted one would.
curve = []
with tempfile.TemporaryDirectory() as tmp:
    run = RunDir(Path(tmp) / "m2")
    run.create()
    for epoch in range(1, EPOCHS + 1):
        pyro.set_rng_seed(0)
        m2 = build_model(config)
        fit(m2, data, TrainConfig(epochs=epoch, seed=0), run, config, False, resume=epoch > 1)
        m2.eval()
        with torch.no_grad():
            x_test = eval_data(m2, data.test)
            curve.append((epoch, error(m2.classify(x_test), y_test), run.read_metrics()[-1]))
    labelled = run.read_json(RunDir.CONFIG)["labelled_points"]

# The same classifier network, on the labelled points alone (cross-entropy, Adam), stopped
# at its best validation error: what the unlabelled points must beat.
index = torch.tensor(labelled)
assert torch.equal(index, choose_labelled(data.labels["train"], PER_CLASS, seed=0))
pyro.set_rng_seed(0)
alone = build_model(config).classifier
optimizer = torch.optim.Adam(alone.parameters(), lr=1e-3)
x_l, y_l = data.train[index], data.labels["train"][index]
x_valid = eval_data(m2, data.valid)
best = (2.0, 1.0)
for _ in range(STEPS):
    loss = torch.nn.functional.cross_entropy(alone(dynamic_binarize(x_l)), y_l)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        valid = error(alone(x_valid), data.labels["valid"])
        if valid < best[0]:
            best = (valid, error(alone(x_test), y_test))

final = curve[-1]
by_valid = min(curve, key=lambda c: c[2]["valid_error"])
lines = [
    f"{len(labelled)} labelled digits ({PER_CLASS} per class) of {data.train.shape[0]}; "
    f"{data.test.shape[0]} test digits.",
    "",
    "| classifier | test error |",
    "|---|---|",
    f"| M2 after {final[0]} epochs | {100 * final[1]:.1f}% |",
    f"| M2 at its best validation epoch ({by_valid[0]}) | {100 * by_valid[1]:.1f}% |",
    f"| same network, labelled points alone (best validation step) | {100 * best[1]:.1f}% |",
]
(OUT / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

fig = Figure(figsize=(6, 3.8), layout="constrained")
ax = fig.subplots()
ax.plot([c[0] for c in curve], [100 * c[1] for c in curve], "o-", ms=3, label="M2, test")
ax.plot(
    [c[0] for c in curve], [100 * c[2]["valid_error"] for c in curve], "--", label="M2, validation"
)
ax.axhline(100 * best[1], color="gray", ls=":", label="labelled points alone, test")
ax.set_xlabel("epoch")
ax.set_ylabel("classification error (%)")
ax.set_title(f"M2 on the digits with {len(labelled)} labels")
ax.grid(alpha=0.3)
ax.legend()
fig.savefig(OUT / "error.png", dpi=120)

# Class-conditional samples: z ~ N(0, I), then E[x | z, y] for each class y in turn.
from pyro_vae.analysis.plots import plot_image_grid  # noqa: E402

torch.manual_seed(0)
samples = m2.sample_per_class(8)  # (10, 8, *event_shape)
plot_image_grid(samples.reshape(-1, *data.event_shape), OUT / "samples.png",
                "M2 samples, one row per class y", ncol=8)  # fmt: skip
