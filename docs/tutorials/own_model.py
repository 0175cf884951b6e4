"""Your own Pyro model: train and score a hand-written model/guide pair (probabilistic PCA,
whose log p(x) is known exactly) with the library's objectives and estimators.

Run: python docs/tutorials/own_model.py  (outputs go to $PYRO_VAE_TUTORIAL_OUT, default
./own-model-output; PYRO_VAE_TUTORIAL_QUICK=1: a tiny run for the tests)
"""

import os
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.errors import PyroVAEError
from pyro_vae.infer import log_likelihood, make_objective

OUT = Path(os.environ.get("PYRO_VAE_TUTORIAL_OUT", "own-model-output"))
QUICK = os.environ.get("PYRO_VAE_TUTORIAL_QUICK") == "1"
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
pyro.set_rng_seed(0)

D, d = 5, 2  # data and latent dimensions


class PPCA(PyroModule):
    """p(z) = N(0, I), p(x | z) = N(W z + b, s^2 I)  =>  p(x) = N(b, W W^T + s^2 I)."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(0.1 * torch.randn(D, d))
        self.b = nn.Parameter(torch.zeros(D))
        self.log_s = nn.Parameter(torch.zeros(()))

    def forward(self, x):  # x: (N, D)
        # The contract: one plate named "data" at dim -1 over the data points; extra
        # dimensions (particles) go on the left, so vectorized estimators need no special case.
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(torch.zeros(d), 1.0).to_event(1))
            loc = z @ self.W.T + self.b
            pyro.sample("x", dist.Normal(loc, self.log_s.exp()).to_event(1), obs=x)

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.log_s.exp() ** 2 * torch.eye(D)
        return dist.MultivariateNormal(self.b, cov).log_prob(x)


class LinearGuide(PyroModule):
    """q(z | x) = N(A x + c, diag softplus(r)^2): an amortized guide, linear like the truth."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(D, 2 * d)

    def forward(self, x):
        loc, raw = self.net(x).chunk(2, dim=-1)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


# Data from a PPCA with known parameters.
W_true, b_true, s_true = torch.randn(D, d), torch.randn(D), 0.3
x = torch.randn(1000, d) @ W_true.T + b_true + s_true * torch.randn(1000, D)
x_train, x_test = x[:800], x[800:]

results = {}
for name, objective in {
    "ELBO": make_objective("elbo"),
    "IWAE, K=10": make_objective("iwae", num_particles=10),
}.items():
    model, guide = PPCA(), LinearGuide()
    optimizer = torch.optim.Adam([*model.parameters(), *guide.parameters()], lr=0.02)
    curve = []
    for step in range(30 if QUICK else 1500):
        batch = x_train[torch.randint(0, len(x_train), (100,))]
        value = objective.loss(model, guide, batch)  # loss summed over the batch
        optimizer.zero_grad()
        (value.loss / len(batch)).backward()
        optimizer.step()
        if step % 10 == 0:
            with torch.no_grad():
                curve.append(
                    (step, value.elbo / len(batch), float(model.exact_log_px(batch).mean()))
                )
    with torch.no_grad():
        scored = log_likelihood(model, guide, x_test, num_samples=100 if QUICK else 1000)
        exact = float(model.exact_log_px(x_test).mean())
    results[name] = (scored, exact, curve)

lines = [
    "| trained with | test ELBO | test log p(x), IS K=1000 | exact test log p(x) |",
    "|---|---|---|---|",
]
for name, (scored, exact, _) in results.items():
    lines.append(
        f"| {name} | {scored.elbo:.3f} | {scored.mean:.3f} +- {scored.stderr:.3f} | {exact:.3f} |"
    )
if QUICK:
    lines[0] = lines[0].replace("K=1000", "K=100")

# What the contract refuses: data the model would silently broadcast.
try:
    log_likelihood(model, guide, x_test[:, :3], num_samples=10)
except PyroVAEError as error:
    lines += ["", f"Scoring 3-column data with this 5-column model: `{error}`"]
(OUT / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

fig = Figure(figsize=(6.5, 3.6), layout="constrained")
ax = fig.subplots()
for i, (name, (_, _, curve)) in enumerate(results.items()):
    steps = [c[0] for c in curve]
    ax.plot(steps, [c[1] for c in curve], color=f"C{i}", alpha=0.6, label=f"{name}: batch ELBO")
    ax.plot(steps, [c[2] for c in curve], color=f"C{i}", ls="--", label=f"{name}: exact log p(x)")
ax.set_ylim(bottom=max(min(c[2] for r in results.values() for c in r[2]) - 5, -30))
ax.set_xlabel("step")
ax.set_ylabel("nats per data point")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
fig.savefig(OUT / "training.png", dpi=120)
