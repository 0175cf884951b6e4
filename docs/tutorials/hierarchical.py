"""Two stochastic layers: a hierarchical VAE with bottom-up and ladder inference against the
one-layer VAE, at equal epochs, scored by importance sampling, with the active units of each
layer.

Run: python docs/tutorials/hierarchical.py  (outputs go to $PYRO_VAE_TUTORIAL_OUT, default
./hierarchical-output; PYRO_VAE_TUTORIAL_QUICK=1: a tiny run for the tests)
"""

import os
from pathlib import Path

import pyro
import torch

from pyro_vae.analysis.plots import plot_image_grid, plot_kl_per_dim
from pyro_vae.data import eval_data, load_digits
from pyro_vae.infer import latent_usage, log_likelihood
from pyro_vae.models import ModelConfig, build_model
from pyro_vae.train import TrainConfig, fit

OUT = Path(os.environ.get("PYRO_VAE_TUTORIAL_OUT", "hierarchical-output"))
QUICK = os.environ.get("PYRO_VAE_TUTORIAL_QUICK") == "1"
OUT.mkdir(parents=True, exist_ok=True)

data = load_digits()
if QUICK:
    data = data.head(200)
EPOCHS, K = (1, 10) if QUICK else (150, 1000)

# The same data, networks of the same widths, the same objective and epochs; the models
# differ in their latent structure. ModelConfig names the kind and its options, exactly as
# `pyro-vae train --model hvae --layers 8,4 --inference ladder` does.
shape = data.event_shape
MODELS = {
    "VAE, z: 8": ModelConfig(shape, latent_dim=8, hidden=(64, 32)),
    "HVAE bottom-up, z1: 8, z2: 4": ModelConfig(
        shape, hidden=(64, 32), kind="hvae", kind_options={"layers": (8, 4)}
    ),
    "HVAE ladder, z1: 8, z2: 4": ModelConfig(
        shape, hidden=(64, 32), kind="hvae",
        kind_options={"layers": (8, 4), "inference": "ladder"},
    ),
}
warmup = TrainConfig(epochs=EPOCHS, seed=0, warmup="linear", warmup_epochs=EPOCHS / 5)
# free bits: a floor of 0.25 nats on the KL of every unit of every layer (Kingma et al. 2016);
# refused for the bottom-up guide, where that KL would be biased (see below)
free_bits = TrainConfig(epochs=EPOCHS, seed=0, free_bits=0.25)
RUNS = [(name, config, warmup, "KL warm-up") for name, config in MODELS.items()]
RUNS.append(("HVAE ladder, z1: 8, z2: 4", MODELS["HVAE ladder, z1: 8, z2: 4"], free_bits,
             "free bits 0.25"))  # fmt: skip

lines = [
    f"| model | training | test log p(x), IS K={K} | ELBO | active units per layer | KL per "
    "layer (nats) |",
    "|---|---|---|---|---|---|",
]
trained = {}
for name, config, train, how in RUNS:
    pyro.set_rng_seed(0)
    model = build_model(config)
    fit(model, data, train, progress=False)
    model.eval()
    x = eval_data(model, data.test)
    with torch.no_grad():
        ll = log_likelihood(model.model, model.guide, x, num_samples=K)
    usage = latent_usage(model.model, model.guide, x)
    layers = ", ".join(f"{s}: {u.active_units}/{u.num_units}" for s, u in usage.sites.items())
    kl = ", ".join(f"{s}: {u.kl:.2f}" for s, u in usage.sites.items())
    lines.append(
        f"| {name} | {how} | {ll.mean:.2f} +- {ll.stderr:.2f} | {ll.elbo:.2f} | {layers} | {kl} |"
    )
    trained[name, how] = (model, usage)
(OUT / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

# The KL of every unit of every layer of the ladder model, and ancestral samples of it:
# z2 ~ p(z2), z1 ~ p(z1 | z2), then E[x | z1].
ladder, ladder_usage = trained["HVAE ladder, z1: 8, z2: 4", "free bits 0.25"]
plot_kl_per_dim(ladder_usage, OUT / "kl_ladder.png", title="ladder HVAE, free bits 0.25")
torch.manual_seed(0)
plot_image_grid(ladder.sample(64), OUT / "samples_ladder.png", "ladder HVAE samples E[x | z1]")
