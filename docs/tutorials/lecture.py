"""The lecture in code: an autoencoder, a VAE, the reparameterization trick, the ELBO, and
the applications, on the embedded 8x8 digits with a 2-D latent space.

Run: python docs/tutorials/lecture.py  (figures go to $PYRO_VAE_TUTORIAL_OUT, default
./lecture-output; PYRO_VAE_TUTORIAL_QUICK=1: a tiny run for the tests)
"""

import os
from pathlib import Path

import torch

import pyro_vae
from pyro_vae.analysis import figures
from pyro_vae.data import eval_data, load_digits
from pyro_vae.infer import log_likelihood
from pyro_vae.models.autoencoder import build_autoencoder
from pyro_vae.train import TrainConfig, fit, fit_autoencoder

OUT = Path(os.environ.get("PYRO_VAE_TUTORIAL_OUT", "lecture-output"))
QUICK = os.environ.get("PYRO_VAE_TUTORIAL_QUICK") == "1"
OUT.mkdir(parents=True, exist_ok=True)

# --- 1. The same networks, trained two ways ---------------------------------------------------
data = load_digits()  # (N, 1, 8, 8) in [0, 1], labels 0-9
config = pyro_vae.ModelConfig(event_shape=data.event_shape, latent_dim=2)
if QUICK:  # the test suite's size: a few points of each split, one epoch
    data = data.head(200)
training = TrainConfig(epochs=1 if QUICK else 100, seed=0)

ae = build_autoencoder(config)  # x -> code -> x: minimizes -log p(x | decoder(encoder(x)))
fit_autoencoder(ae, data, training, progress=False)

vae = pyro_vae.build_vae(config)  # x -> q(z | x) -> z -> p(x | z): maximizes the ELBO
fit(vae, data, training, progress=False)

# Latent codes of the test digits, and a grid decoded over the codes' extent, side by side.
figures.figure_comparison({"autoencoder": ae, "VAE": vae}, data, OUT / "latent-spaces.png")

# --- 2. The reparameterization trick ----------------------------------------------------------
x = eval_data(vae, data.test[:64])  # the fixed binarization the model is scored on
q = vae.encode(x)  # q(z | x) = N(mu(x), diag sigma(x)^2), one per input
eps = torch.randn_like(q.mean)
z = q.mean + q.stddev * eps  # z = mu + sigma * eps: a deterministic function of mu, sigma
z.sum().backward()  # so gradients reach the encoder through mu and sigma
encoder_grad = sum(p.grad.abs().sum() for p in vae.encoder.parameters() if p.grad is not None)

# --- 3. The ELBO = reconstruction - KL --------------------------------------------------------
with torch.no_grad():
    z = q.rsample()  # the same trick, as Pyro does it
    reconstruction = vae.decode(z).log_prob(x)  # log p(x | z), one sample per input
    kl = q.log_prob(z) - vae.prior().log_prob(z)  # a one-sample estimate of KL(q || p)
    elbo = reconstruction - kl
scored = log_likelihood(vae.model, vae.guide, x, num_samples=200 if QUICK else 1000)

rows = [
    ("E_q[log p(x given z)] (reconstruction)", reconstruction.mean()),
    ("KL divergence of q(z given x) from p(z)", kl.mean()),
    ("ELBO = reconstruction - KL", elbo.mean()),
    (f"log p(x), importance sampling K={scored.num_samples}", scored.mean),
]
table = "| quantity, nats per test digit | value |\n|---|---|\n"
table += "".join(f"| {name} | {float(value):.2f} |\n" for name, value in rows)
table += (
    f"\nGradient reaching the encoder through z = mu + sigma * eps: {float(encoder_grad):.3g}\n"
)
(OUT / "elbo.md").write_text(table)
print(table)

# --- 4. The applications ----------------------------------------------------------------------
figures.figure_samples(vae, data, OUT / "samples.png", n=32)  # generate: z ~ p(z), E[x | z]
figures.figure_reconstructions(vae, data, OUT / "reconstructions.png", n=16)
figures.figure_manifold(vae, data, OUT / "manifold.png", n=12)  # move through the 2-D space
figures.figure_interpolation(vae, data, OUT / "interpolation.png", steps=8)
figures.figure_attribute(vae, data, OUT / "attribute.png", positive=1, negative=7, n=4)
print(f"figures in {OUT}")
