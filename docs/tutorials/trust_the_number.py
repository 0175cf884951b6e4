"""Is my log-likelihood right? Importance sampling against AIS, the effective sample size,
PSIS k-hat, and the inference gaps, on a model whose encoder is deliberately under-trained so
that the estimators disagree.

Run: python docs/tutorials/trust_the_number.py  (outputs go to $PYRO_VAE_TUTORIAL_OUT,
default ./trust-output; PYRO_VAE_TUTORIAL_QUICK=1: a tiny run for the tests)
"""

import os
from pathlib import Path

from matplotlib.figure import Figure

import pyro_vae
from pyro_vae.data import eval_data, load_digits
from pyro_vae.infer import (
    ais_log_likelihood,
    khat_summary,
    log_likelihood,
    psis_khat,
    vae_inference_gaps,
)
from pyro_vae.train import TrainConfig, fit

OUT = Path(os.environ.get("PYRO_VAE_TUTORIAL_OUT", "trust-output"))
QUICK = os.environ.get("PYRO_VAE_TUTORIAL_QUICK") == "1"
OUT.mkdir(parents=True, exist_ok=True)

# A VAE with an 8-D latent space, trained only briefly: its decoder is usable but its encoder
# is a poor proposal, the situation where a log-likelihood estimate can mislead.
data = load_digits()
if QUICK:  # the test suite's size
    data = data.head(200)
config = pyro_vae.ModelConfig(event_shape=data.event_shape, latent_dim=8)
vae = pyro_vae.build_vae(config)
fit(vae, data, TrainConfig(epochs=1 if QUICK else 5, seed=0), progress=False)
x = eval_data(vae, data.test[: 4 if QUICK else 40])

# 1. Importance sampling: log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x).
#    A lower bound in expectation for every K, rising to log p(x) as K grows.
Ks = [1, 10, 100] if QUICK else [1, 10, 100, 1000, 10000]
estimates = {k: log_likelihood(vae.model, vae.guide, x, num_samples=k) for k in Ks}
largest = log_likelihood(vae.model, vae.guide, x, num_samples=Ks[-1], keep_log_weights=True)

# 2. Diagnostics of the largest run: the effective sample size (ESS) of the weights, and
#    PSIS k-hat (Vehtari et al. 2024): above 0.7 the estimate is not to be trusted.
khat = psis_khat(largest.log_weights)
diagnostics = khat_summary(khat)

# 3. Annealed importance sampling (Neal 2001): anneals from q(z | x) to p(z | x) with HMC.
ais = ais_log_likelihood(
    vae.model, vae.guide, x, num_steps=20 if QUICK else 500, num_chains=2 if QUICK else 8
)

# 4. The gap ELBO -> log p(x) split in two (Cremer et al. 2018): the family's fault
#    (approximation gap) and the encoder's (amortization gap).
gaps = vae_inference_gaps(
    vae, x, num_steps=20 if QUICK else 500, num_samples=Ks[-1], ais_per_example=ais.per_example
)

lines = ["| estimate | nats per digit | standard error | mean ESS |", "|---|---|---|---|"]
lines.append(f"| ELBO | {largest.elbo:.2f} | {largest.elbo_stderr:.2f} | |")
for k, r in estimates.items():
    lines.append(f"| IS, K={k} | {r.mean:.2f} | {r.stderr:.2f} | {float(r.ess.mean()):.1f} |")
lines.append(
    f"| AIS, {ais.num_steps} steps x {ais.num_chains} chains | {ais.mean:.2f} "
    f"| {ais.stderr:.2f} | |"
)
lines.append("")
lines.append(
    f"PSIS k-hat at K={Ks[-1]}: {100 * diagnostics['frac_over_0.7']:.0f}% of the digits over "
    f"0.7, {100 * diagnostics['frac_over_0.5']:.0f}% over 0.5, largest {diagnostics['max']:.2f}."
)
lines += ["", "| gap split | nats per digit | standard error |", "|---|---|---|"]
for name, (mean, se) in gaps.summary().items():
    lines.append(f"| {name} | {mean:.2f} | {se:.2f} |")
(OUT / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

# The estimates against K, with AIS as a band, and k-hat per digit.
fig = Figure(figsize=(9, 3.6), layout="constrained")
left, right = fig.subplots(1, 2, width_ratios=[3, 2])
left.errorbar(
    Ks,
    [estimates[k].mean for k in Ks],
    yerr=[2 * estimates[k].stderr for k in Ks],
    fmt="o-",
    label="importance sampling, +-2 se",
)
left.axhspan(ais.mean - 2 * ais.mc_stderr, ais.mean + 2 * ais.mc_stderr, color="C3", alpha=0.2)
left.axhline(ais.mean, color="C3", label="AIS (band: +-2 Monte Carlo se)")
left.axhline(largest.elbo, color="gray", ls="--", label="ELBO")
left.set_xscale("log")
left.set_xlabel("importance samples K")
left.set_ylabel("log p(x), nats per digit")
left.legend(fontsize=8)
left.grid(alpha=0.3)
right.hist(khat.numpy(), bins=20, color="C0")
right.axvline(0.7, color="C3", label="0.7: unreliable above")
right.set_xlabel(f"PSIS k-hat per digit (K={Ks[-1]})")
right.set_ylabel("digits")
right.legend(fontsize=8)
fig.savefig(OUT / "estimates.png", dpi=120)
