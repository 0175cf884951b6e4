"""Is my log-likelihood right? Importance sampling against AIS, the effective sample size,
PSIS k-hat, and the inference gaps, with a good proposal and a deliberately overconfident one,
on which the estimators disagree.

Run: python docs/tutorials/trust_the_number.py  (outputs go to $PYRO_VAE_TUTORIAL_OUT,
default ./trust-output; PYRO_VAE_TUTORIAL_QUICK=1: a tiny run for the tests)
"""

import os
from pathlib import Path

import pyro
import pyro.distributions as dist
from matplotlib.figure import Figure

import pyro_vae
from pyro_vae.data import eval_data, load_digits
from pyro_vae.infer import (
    ais_log_likelihood,
    khat_summary,
    latent_usage,
    log_likelihood,
    psis_khat,
    vae_inference_gaps,
)
from pyro_vae.train import TrainConfig, fit

OUT = Path(os.environ.get("PYRO_VAE_TUTORIAL_OUT", "trust-output"))
QUICK = os.environ.get("PYRO_VAE_TUTORIAL_QUICK") == "1"
OUT.mkdir(parents=True, exist_ok=True)

data = load_digits()
if QUICK:  # the test suite's size
    data = data.head(200)
EPOCHS = 1 if QUICK else 60

# 0. First check the model uses its latent space. A model whose decoder ignores z has
#    q(z | x) = p(z) = p(z | x): every proposal is then exact, and the checks below would
#    pass for that reason alone. Active units (Burda et al. 2016): Cov_x E_q[z_u] > 0.01.
config = pyro_vae.ModelConfig(event_shape=data.event_shape, latent_dim=4)
plain = pyro_vae.build_vae(config)
fit(plain, data, TrainConfig(epochs=EPOCHS, seed=0), progress=False)
usage_plain = latent_usage(plain.model, plain.guide, eval_data(plain, data.test))

# The usual remedy: KL warm-up, the KL weight rising from 0 to 1 over the first epochs.
vae = pyro_vae.build_vae(config)
warmup = TrainConfig(epochs=EPOCHS, seed=0, warmup="linear", warmup_epochs=EPOCHS / 3)
fit(vae, data, warmup, progress=False)
usage = latent_usage(vae.model, vae.guide, eval_data(vae, data.test))
x = eval_data(vae, data.test[: 4 if QUICK else 40])


def overconfident_guide(x):
    """The encoder's means with a third of its standard deviations: a proposal too narrow."""
    q = vae.encode(x)
    with pyro.plate("data", x.shape[0], dim=-1):
        pyro.sample("z", dist.Normal(q.mean, q.stddev / 3).to_event(1))


GUIDES = {"encoder q(z given x)": vae.guide, "overconfident guide": overconfident_guide}
Ks = [1, 10, 100] if QUICK else [1, 10, 100, 1000, 10000]

# 1. Importance sampling: log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x).
#    A lower bound in expectation for every K, rising to log p(x) as K grows.
# 2. Diagnostics of the largest K: the effective sample size (ESS) of the weights, and
#    PSIS k-hat (Vehtari et al. 2024): above 0.7 the estimate is not to be trusted.
runs = {}
for name, guide in GUIDES.items():
    estimates = {k: log_likelihood(vae.model, guide, x, num_samples=k) for k in Ks[:-1]}
    estimates[Ks[-1]] = log_likelihood(vae.model, guide, x, Ks[-1], keep_log_weights=True)
    runs[name] = (estimates, psis_khat(estimates[Ks[-1]].log_weights))

# 3. Annealed importance sampling (Neal 2001): anneals from q(z | x) to p(z | x) with HMC.
ais = ais_log_likelihood(
    vae.model, vae.guide, x, num_steps=20 if QUICK else 500, num_chains=2 if QUICK else 8
)

# 4. The gap ELBO -> log p(x) split in two (Cremer et al. 2018): the family's fault
#    (approximation gap) and the encoder's (amortization gap).
gaps = vae_inference_gaps(
    vae, x, num_steps=20 if QUICK else 500, num_samples=Ks[-1], ais_per_example=ais.per_example
)

rows = ["| model | active units | KL per dimension (nats) | I(x; z) (nats) |", "|---|---|---|---|"]
for name, u in (("plain ELBO", usage_plain), ("KL warm-up", usage)):
    kl = ", ".join(f"{v:.3f}" for v in u.sites["z"].kl_per_dim.tolist())
    active = f"{u.active_units} of {u.num_units}"
    rows.append(f"| {name} | {active} | {kl} | {u.mutual_information:.2f} |")
rows += ["", f"The plain model's collapse warning: `{usage_plain.warning() or 'none'}`"]
(OUT / "usage.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))

lines = ["| proposal | estimate | nats per digit | standard error | mean ESS |"]
lines.append("|---|---|---|---|---|")
for name, (estimates, _) in runs.items():
    best = estimates[Ks[-1]]
    lines.append(f"| {name} | ELBO | {best.elbo:.2f} | {best.elbo_stderr:.2f} | |")
    for k, r in estimates.items():
        ess = float(r.ess.mean())
        lines.append(f"| {name} | IS, K={k} | {r.mean:.2f} | {r.stderr:.2f} | {ess:.1f} |")
lines.append(
    f"| encoder q(z given x) | AIS, {ais.num_steps} steps x {ais.num_chains} chains "
    f"| {ais.mean:.2f} | {ais.stderr:.2f} | |"
)
lines.append("")
for name, (_, khat) in runs.items():
    summary = khat_summary(khat)
    lines.append(
        f"- PSIS k-hat of the {name} at K={Ks[-1]}: {100 * summary['frac_over_0.7']:.0f}% of "
        f"the digits over 0.7, {100 * summary['frac_over_0.5']:.0f}% over 0.5, largest "
        f"{summary['max']:.2f}."
    )
lines += ["", "| gap split (encoder q) | nats per digit | standard error |", "|---|---|---|"]
for name, (mean, se) in gaps.summary().items():
    lines.append(f"| {name} | {mean:.2f} | {se:.2f} |")
(OUT / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

# The estimates against K, with AIS as a band, and k-hat per digit for both proposals.
fig = Figure(figsize=(9.5, 3.8), layout="constrained")
left, right = fig.subplots(1, 2, width_ratios=[3, 2])
for i, (name, (estimates, khat)) in enumerate(runs.items()):
    means = [estimates[k].mean for k in Ks]
    errors = [2 * estimates[k].stderr for k in Ks]
    left.errorbar(Ks, means, yerr=errors, fmt="o-", color=f"C{i}", label=f"IS, {name}")
    right.hist(khat.numpy(), bins=20, range=(-0.5, 2.0), color=f"C{i}", alpha=0.6, label=name)
left.axhspan(ais.mean - 2 * ais.mc_stderr, ais.mean + 2 * ais.mc_stderr, color="C3", alpha=0.2)
left.axhline(ais.mean, color="C3", label="AIS (band: +-2 Monte Carlo se)")
left.set_xscale("log")
left.set_xlabel("importance samples K")
left.set_ylabel("log p(x), nats per digit")
left.legend(fontsize=8)
left.grid(alpha=0.3)
right.axvline(0.7, color="C3", ls="--", label="0.7: unreliable above")
right.set_xlabel(f"PSIS k-hat per digit (K={Ks[-1]})")
right.set_ylabel("digits")
right.legend(fontsize=8)
fig.savefig(OUT / "estimates.png", dpi=120)

# The KL of each latent dimension of both models; the bars of inactive units are grey.
from pyro_vae.analysis.plots import plot_kl_per_dim  # noqa: E402

plot_kl_per_dim(usage_plain, OUT / "kl_plain.png", title="plain ELBO, 60 epochs")
plot_kl_per_dim(usage, OUT / "kl_warmup.png", title="KL warm-up over 20 epochs, 60 epochs")
