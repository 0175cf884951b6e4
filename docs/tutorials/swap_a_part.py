"""Swap one part: the same digits under different priors and posterior families, scored by
importance sampling, with what each change buys.

Run: python docs/tutorials/swap_a_part.py  (outputs go to $PYRO_VAE_TUTORIAL_OUT, default
./swap-output; PYRO_VAE_TUTORIAL_QUICK=1: a tiny run for the tests)
"""

import os
import time
from pathlib import Path

from matplotlib.figure import Figure

import pyro_vae
from pyro_vae.analysis import figures
from pyro_vae.data import eval_data, load_digits
from pyro_vae.infer import log_likelihood
from pyro_vae.train import TrainConfig, fit

OUT = Path(os.environ.get("PYRO_VAE_TUTORIAL_OUT", "swap-output"))
QUICK = os.environ.get("PYRO_VAE_TUTORIAL_QUICK") == "1"
OUT.mkdir(parents=True, exist_ok=True)

data = load_digits()
if QUICK:  # the test suite's size: a few points of each split, one epoch
    data = data.head(200)
training = TrainConfig(epochs=1 if QUICK else 40, seed=0)
K = 100 if QUICK else 1000

# Each variant changes one part of the baseline (standard normal prior, diagonal Gaussian
# posterior, Bernoulli likelihood); everything else, the seed included, stays the same.
VARIANTS = {
    "baseline": {},
    "mixture prior": {"prior": "mixture"},
    "VampPrior": {"prior": "vamp"},
    "full-rank posterior": {"posterior": "full_rank"},
    "IAF posterior": {"posterior": "iaf"},
}

rows = []
for name, change in VARIANTS.items():
    config = pyro_vae.ModelConfig(event_shape=data.event_shape, latent_dim=2, **change)
    vae = pyro_vae.build_vae(config)
    start = time.perf_counter()
    fit(vae, data, training, progress=False)
    seconds = time.perf_counter() - start
    x = eval_data(vae, data.test)
    result = log_likelihood(vae.model, vae.guide, x, num_samples=K)
    rows.append((name, result, seconds, sum(p.numel() for p in vae.parameters())))
    slug = name.replace(" ", "-").lower()
    figures.figure_samples(vae, data, OUT / f"samples-{slug}.png", n=16)

table = (
    f"| variant | test ELBO | test log p(x), IS K={K} | gap log p(x) - ELBO | parameters "
    "| training s |\n|---|---|---|---|---|---|\n"
)
for name, r, seconds, params in rows:
    table += (
        f"| {name} | {r.elbo:.2f} | {r.mean:.2f} +- {r.stderr:.2f} | {r.mean - r.elbo:.2f} "
        f"| {params:,} | {seconds:.1f} |\n"
    )
(OUT / "table.md").write_text(table)
print(table)

# One picture of the table: log p(x) with two standard errors, and the ELBO below it.
fig = Figure(figsize=(6.5, 3.5), layout="constrained")
ax = fig.subplots()
names = [r[0] for r in rows]
ax.errorbar(
    [r[1].mean for r in rows],
    names,
    xerr=[2 * r[1].stderr for r in rows],
    fmt="o",
    label="log p(x), +-2 standard errors",
)
ax.plot([r[1].elbo for r in rows], names, "x", label="ELBO")
ax.invert_yaxis()
ax.set_xlabel("nats per test digit (higher is better)")
ax.grid(alpha=0.3)
ax.legend(loc="lower left", fontsize=8)
fig.savefig(OUT / "comparison.png", dpi=120)
