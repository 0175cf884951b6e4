"""Conditional VAEs: p(x | z, y) for a class label, and Pyro's image-completion task, the other
three quadrants of a digit from one, with the conditional log-likelihood of each.

Run: python docs/tutorials/conditional.py  (outputs go to $PYRO_VAE_TUTORIAL_OUT, default
./conditional-output; PYRO_VAE_TUTORIAL_QUICK=1: a tiny run for the tests)
"""

import os
from pathlib import Path

import pyro
import torch

from pyro_vae.analysis.run_figures import draw
from pyro_vae.data import eval_data, load_digits
from pyro_vae.infer import latent_usage, log_likelihood
from pyro_vae.models import ModelConfig, build_model
from pyro_vae.runs import configured_for_data
from pyro_vae.train import TrainConfig, fit

OUT = Path(os.environ.get("PYRO_VAE_TUTORIAL_OUT", "conditional-output"))
QUICK = os.environ.get("PYRO_VAE_TUTORIAL_QUICK") == "1"
OUT.mkdir(parents=True, exist_ok=True)

data = load_digits()
if QUICK:
    data = data.head(200)
EPOCHS, K = (1, 10) if QUICK else (200, 1000)
train = TrainConfig(epochs=EPOCHS, seed=0, warmup="linear", warmup_epochs=EPOCHS / 5)
shape, hidden = data.event_shape, (128, 64)

# Three models with the same networks: p(x) (a VAE), p(x | y) (a CVAE on the label, with a
# learned prior p(z | y)) and p(x_hidden | x_visible) (a CVAE on the bottom-left quadrant).
# From the command line: --model cvae --condition-on labels --conditional-prior true.
configs = {
    "VAE: log p(x)": ModelConfig(shape, latent_dim=4, hidden=hidden),
    "CVAE on the label: log p(x | y)": ModelConfig(
        shape, latent_dim=4, hidden=hidden, kind="cvae",
        kind_options={"condition_on": "labels", "conditional_prior": True},
    ),
    "CVAE on a quadrant: log p(other three | quadrant)": ModelConfig(
        shape, latent_dim=4, hidden=hidden, kind="cvae",
        kind_options={"condition_on": "quadrant", "conditional_prior": True},
    ),
}
lines = [f"| model | test score, IS K={K} (nats per digit) | active units |", "|---|---|---|"]
models = {}
for name, config in configs.items():
    config = configured_for_data(config, data)  # num_classes from the labels
    pyro.set_rng_seed(0)
    model = build_model(config)
    fit(model, data, train, progress=False)
    model.eval()
    x = eval_data(model, data.test)
    # the programs of the label-conditioned model take (x, y); the others x alone
    args = (data.labels["test"],) if "label" in name else ()
    with torch.no_grad():
        ll = log_likelihood(model.model, model.guide, x, *args, num_samples=K)
    usage = latent_usage(model.model, model.guide, x, *args)
    row = name.replace("|", "\\|")  # a bar inside a Markdown table cell
    active = f"{usage.active_units} of {usage.num_units}"
    lines.append(f"| {row} | {ll.mean:.2f} +- {ll.stderr:.2f} | {active} |")
    models[name] = model
(OUT / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

# The figures `pyro-vae train` draws for these kinds (`pyro-vae plot RUN --kind ...`).
labels, quadrant = list(models.values())[1:]
draw("class_samples", labels, data, OUT / "class_samples.png")
draw("conditional_reconstructions", labels, data, OUT / "reconstructions.png")
draw("completions", quadrant, data, OUT / "completions.png")
