"""Plain-PyTorch twins of the rows of the MNIST table (``benchmarks/mnist_table.py``).

Each row of the table is trained twice: with the library and with the twin defined here, from
the same seed for the same number of epochs. The twins are written from the papers alone, with
nothing but ``torch``, so the two agreeing within seed noise is evidence that the library's
networks, objectives and schedules are the papers' ones.

Rows (:data:`ROWS`):

- ``vae_1l``, ``iwae5_1l``, ``iwae50_1l``: Burda, Grosse & Salakhutdinov (2016), "Importance
  Weighted Autoencoders", one stochastic layer of 50 units, tanh MLPs 784-200-200, k = 1, 5, 50.
- ``vae_2l``, ``iwae50_2l``: the same paper's two stochastic layers (100 and 50 units).
- ``vae_gated``, ``vamp``: Tomczak & Welling (2018), "VAE with a VampPrior", gated MLPs
  784-300-300, 40 latent units, KL warm-up over 100 epochs; standard normal prior or VampPrior
  with 500 pseudo-inputs.
- ``m2``: Kingma, Rezende, Mohamed & Welling (2014), "Semi-supervised Learning with Deep
  Generative Models", model M2 (10 classes, 50 latent units, softplus MLPs of 500 units).

Notation: x in {0, 1}^784 (each training batch binarized afresh from gray values),
``p(x|z) = prod_i Bernoulli(x_i; sigmoid(logits_i))``, Gaussian layers
``N(loc, diag(scale^2))`` with ``scale = softplus(raw) + 1e-6`` read from a linear output of
size 2 D (first D: loc, last D: raw).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PIXELS = 784
LOG_2PI = math.log(2.0 * math.pi)
SAMPLE_BUDGET = 10_000  # latent samples per forward pass in log_likelihood
PARTICLE_BLOCK = 1_000  # particles per image per forward pass in log_likelihood


@dataclass(frozen=True)
class RowSpec:
    """One row of the table: model family, objective, optimizer and schedule.

    ``arch`` picks the networks: ``"mlp1"`` (one stochastic layer, tanh MLPs), ``"mlp2"`` (two
    stochastic layers), ``"gated"`` (gated MLPs) or ``"m2"``. ``k`` is the number of importance
    particles of the training objective; ``schedule`` is ``"iwae"`` (stages of 3^i epochs at
    ``lr * 10^(-i/7)``, ``stages`` of them) or ``"constant"``; ``warmup_epochs`` > 0 anneals the
    KL weight linearly from 0 to 1 over that many (fractional) epochs. ``pseudo_inputs`` > 0
    replaces the N(0, I) prior by a VampPrior; ``alpha`` weighs M2's classification loss.
    """

    name: str
    paper: str
    k: int
    batch_size: int
    lr: float
    adam_eps: float
    schedule: str
    warmup_epochs: float
    arch: str
    latent: int
    pseudo_inputs: int = 0
    alpha: float = 0.0
    stages: int = 8


_BURDA = "Burda et al. 2016 (IWAE)"
_TOMCZAK = "Tomczak & Welling 2018 (VampPrior)"
_KINGMA = "Kingma et al. 2014 (M2)"


def _burda(name: str, k: int, arch: str) -> RowSpec:
    latent = 50 if arch == "mlp1" else 100  # "mlp2": 100 units in z1, 50 in z2
    return RowSpec(name, _BURDA, k, 20, 1e-3, 1e-4, "iwae", 0.0, arch, latent)


ROWS: dict[str, RowSpec] = {
    spec.name: spec
    for spec in (
        _burda("vae_1l", 1, "mlp1"),
        _burda("iwae5_1l", 5, "mlp1"),
        _burda("iwae50_1l", 50, "mlp1"),
        _burda("vae_2l", 1, "mlp2"),
        _burda("iwae50_2l", 50, "mlp2"),
        RowSpec("vae_gated", _TOMCZAK, 1, 100, 5e-4, 1e-8, "constant", 100.0, "gated", 40),
        RowSpec("vamp", _TOMCZAK, 1, 100, 5e-4, 1e-8, "constant", 100.0, "gated", 40, 500),
        RowSpec("m2", _KINGMA, 1, 100, 3e-4, 1e-8, "constant", 0.0, "m2", 50, alpha=50.0),
    )
}


def learning_rate(spec: RowSpec, epoch: int) -> float:
    """Learning rate of ``epoch`` (1-based).

    ``"iwae"``: stage i covers epochs ``(3^i - 1)/2 < epoch <= (3^(i+1) - 1)/2`` (3^i epochs:
    1 | 2-4 | 5-13 | 14-40 | ...) at ``lr * 10^(-i/7)``; past the last of ``spec.stages`` stages
    (epoch 3280 for 8) the last stage's rate is kept. ``"constant"``: ``lr``.
    """
    if epoch < 1:
        raise ValueError(f"epochs count from 1, got {epoch}")
    if spec.schedule == "constant":
        return spec.lr
    if spec.schedule != "iwae":
        raise ValueError(f"unknown schedule {spec.schedule!r}")
    stage = 0
    while stage < spec.stages - 1 and epoch > (3 ** (stage + 1) - 1) // 2:
        stage += 1
    return spec.lr * 10.0 ** (-stage / 7)


def kl_weight(spec: RowSpec, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Warm-up weight ``beta_t = min(1, t / warmup_epochs)``, ``t = epoch - 1 + step / steps``.

    ``epoch`` counts from 1, ``step`` from 0; without warm-up ``beta = 1``.
    """
    if spec.warmup_epochs <= 0:
        return 1.0
    t = (epoch - 1) + step / steps_per_epoch
    return min(1.0, t / spec.warmup_epochs)


# ---------------------------------------------------------------------------------------------
# densities and networks


def normal_log_prob(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``sum_d log N(z_d; loc_d, scale_d^2)`` over the last axis (broadcasting)."""
    u = (z - loc) / scale
    return (-0.5 * u.square() - scale.log() - 0.5 * LOG_2PI).sum(-1)


def std_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``sum_d log N(z_d; 0, 1)`` over the last axis."""
    return (-0.5 * z.square() - 0.5 * LOG_2PI).sum(-1)


def mixture_log_prob(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``log (1/K) sum_k N(z; loc_k, diag(scale_k^2))``: z (..., D), loc, scale (K, D) -> (...).

    The squared distances come from matrix products,
    ``sum_d (z_d - m_kd)^2 / s_kd^2 = z^2 . (1/s_k^2) - 2 z . (m_k/s_k^2) + sum_d m_kd^2/s_kd^2``,
    in float64 against cancellation; (M, K) numbers instead of (M, K, D).
    """
    zf, m, prec = z.double(), loc.double(), scale.double().pow(-2)  # (..., D), (K, D), (K, D)
    sq = zf.square() @ prec.T - 2 * zf @ (m * prec).T + (m.square() * prec).sum(-1)  # (..., K)
    log_norm = -scale.double().log().sum(-1) - 0.5 * z.shape[-1] * LOG_2PI  # (K,)
    log_comp = log_norm - 0.5 * sq
    return (torch.logsumexp(log_comp, dim=-1) - math.log(loc.shape[0])).to(z.dtype)


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``sum_i x_i log sigmoid(l_i) + (1 - x_i) log sigmoid(-l_i)`` over the last axis.

    x: (n, 784), logits: (..., n, 784) -> (..., n).
    """
    x = x.expand_as(logits)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def rsample(loc: torch.Tensor, scale: torch.Tensor, k: int) -> torch.Tensor:
    """k reparameterized draws ``z = loc + scale * eps``, eps ~ N(0, I): (..., D) -> (k, ..., D)."""
    eps = torch.randn((k, *loc.shape), device=loc.device, dtype=loc.dtype)
    return loc + scale * eps


def mlp(sizes: Sequence[int], out: int, activation: type[nn.Module]) -> nn.Sequential:
    """``Linear(s0, s1), act, Linear(s1, s2), act, ..., Linear(s_last, out)`` (no output act)."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), activation()]
    layers.append(nn.Linear(sizes[-1], out))
    return nn.Sequential(*layers)


class GatedDense(nn.Module):
    """Gated layer of Tomczak & Welling: ``h = Linear_h(x) * sigmoid(Linear_g(x))``."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.h = nn.Linear(a, b)
        self.g = nn.Linear(a, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(x) * torch.sigmoid(self.g(x))


def gated_net(a: int, hidden: int, out: int) -> nn.Sequential:
    """``GatedDense(a, hidden), GatedDense(hidden, hidden), Linear(hidden, out)``."""
    return nn.Sequential(GatedDense(a, hidden), GatedDense(hidden, hidden), nn.Linear(hidden, out))


class GaussianHead(nn.Module):
    """A net with 2 D outputs read as a diagonal Gaussian: (..., in) -> loc, scale (..., D).

    ``loc = out[..., :D]``, ``scale = softplus(out[..., D:]) + 1e-6``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.net(h).chunk(2, dim=-1)
        return loc, F.softplus(raw) + 1e-6


# ---------------------------------------------------------------------------------------------
# models


class OneLayer(nn.Module):
    """One stochastic layer: q(z|x) Gaussian, p(x|z) Bernoulli, p(z) N(0, I) or a VampPrior.

    VampPrior (``pseudo_inputs = K > 0``): ``p(z) = (1/K) sum_k q(z | u_k)`` with learnt
    pseudo-inputs u: (K, 784) initialized ``0.05 + 0.01 N(0, 1)`` and passed through the encoder.
    """

    def __init__(self, encoder: GaussianHead, decoder: nn.Module, pseudo_inputs: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.pseudo: nn.Parameter | None = None
        if pseudo_inputs:
            self.pseudo = nn.Parameter(0.05 + 0.01 * torch.randn(pseudo_inputs, PIXELS))

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z): (..., D) -> (...)."""
        if self.pseudo is None:
            return std_normal_log_prob(z)
        loc, scale = self.encoder(self.pseudo)  # (K, D)
        return mixture_log_prob(z, loc, scale)

    def terms(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        """``(log p(x|z), log p(z), log q(z|x))``, each (k, n), for z_1..k ~ q(z|x); x: (n, 784)."""
        loc, scale = self.encoder(x)
        z = rsample(loc, scale, k)  # (k, n, D)
        return (
            bernoulli_log_prob(x, self.decoder(z)),
            self.log_prior(z),
            normal_log_prob(z, loc, scale),
        )


class TwoLayer(nn.Module):
    """Two stochastic layers (Burda et al.): x -> z1 (100) -> z2 (50) in the guide.

    Guide ``q(z1|x) q(z2|z1)``; model ``p(z2) = N(0, I)``, ``p(z1|z2)`` Gaussian,
    ``p(x|z1)`` Bernoulli.
    """

    def __init__(self) -> None:
        super().__init__()
        self.q_z1 = GaussianHead(mlp([PIXELS, 200, 200], 2 * 100, nn.Tanh))
        self.q_z2 = GaussianHead(mlp([100, 100, 100], 2 * 50, nn.Tanh))
        self.p_z1 = GaussianHead(mlp([50, 100, 100], 2 * 100, nn.Tanh))
        self.p_x = mlp([100, 200, 200], PIXELS, nn.Tanh)

    def terms(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        """``(log p(x|z1), log p(z1|z2) + log p(z2), log q(z1|x) + log q(z2|z1))``, each (k, n)."""
        loc1, scale1 = self.q_z1(x)
        z1 = rsample(loc1, scale1, k)  # (k, n, 100)
        loc2, scale2 = self.q_z2(z1)
        z2 = loc2 + scale2 * torch.randn_like(loc2)  # (k, n, 50): one z2 per z1
        ploc1, pscale1 = self.p_z1(z2)
        log_prior = normal_log_prob(z1, ploc1, pscale1) + std_normal_log_prob(z2)
        log_q = normal_log_prob(z1, loc1, scale1) + normal_log_prob(z2, loc2, scale2)
        return bernoulli_log_prob(x, self.p_x(z1)), log_prior, log_q


def objective(model: OneLayer | TwoLayer, x: torch.Tensor, k: int, beta: float) -> torch.Tensor:
    """Per-point objective: (n, 784) -> (n,).

    ``log (1/k) sum_j exp(log p(x|z_j) + beta (log p(z_j) - log q(z_j|x)))``: the IWAE bound
    for beta = 1 (the Monte Carlo ELBO for k = 1), the warmed-up ELBO for k = 1, beta < 1.
    """
    log_lik, log_prior, log_q = model.terms(x, k)
    log_w = log_lik + beta * (log_prior - log_q)
    return torch.logsumexp(log_w, dim=0) - math.log(k)


class M2(nn.Module):
    """Kingma et al.'s M2: ``p(y) = 1/C``, ``p(z) = N(0, I)``, ``p(x|y,z)`` Bernoulli.

    Guide ``q(y|x)`` (classifier) and ``q(z|x,y)``; y enters the networks one-hot.
    """

    def __init__(self, classes: int = 10, latent: int = 50, hidden: int = 500) -> None:
        super().__init__()
        self.classes = classes
        self.classifier = mlp([PIXELS, hidden], classes, nn.Softplus)
        self.encoder = GaussianHead(mlp([PIXELS + classes, hidden], 2 * latent, nn.Softplus))
        self.decoder = mlp([latent + classes, hidden], PIXELS, nn.Softplus)

    def labelled_log_weights(self, x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
        """``log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)``, z_1..k ~ q(z|x,y): -> (k, n).

        x: (n, 784), y: (n, C) one-hot. Its mean over z is L(x, y).
        """
        loc, scale = self.encoder(torch.cat([x, y], dim=-1))
        z = rsample(loc, scale, k)  # (k, n, D)
        logits = self.decoder(torch.cat([z, y.expand(k, -1, -1)], dim=-1))
        log_py = -math.log(self.classes)
        return (
            bernoulli_log_prob(x, logits)
            + log_py
            + std_normal_log_prob(z)
            - normal_log_prob(z, loc, scale)
        )

    def log_weights(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Labelled log-weights for every class: (n, 784) -> (C, k, n)."""
        n, c = x.shape[0], self.classes
        y = torch.eye(c, device=x.device, dtype=x.dtype)[:, None, :].expand(c, n, c)
        lw = self.labelled_log_weights(x.repeat(c, 1), y.reshape(c * n, c), k)  # (k, C n)
        return lw.reshape(k, c, n).transpose(0, 1)

    def unlabelled_bound(self, x: torch.Tensor) -> torch.Tensor:
        """``U(x) = sum_y q(y|x) [L(x, y) - log q(y|x)]``, one z per class: (n, 784) -> (n,)."""
        log_qy = F.log_softmax(self.classifier(x), dim=-1)  # (n, C)
        lw = self.log_weights(x, 1)[:, 0, :].T  # (n, C)
        return (log_qy.exp() * (lw - log_qy)).sum(-1)

    def loss(
        self, xu: torch.Tensor, xl: torch.Tensor, yl: torch.Tensor, alpha: float
    ) -> torch.Tensor:
        """``mean_u(-U(x)) + mean_l(-L(x, y)) + alpha mean_l(-log q(y|x))`` (a scalar).

        xu: (nu, 784) unlabelled, xl: (nl, 784) labelled with yl: (nl,) int64 classes.
        """
        y1h = F.one_hot(yl, self.classes).to(xl.dtype)
        labelled = self.labelled_log_weights(xl, y1h, 1)[0]
        log_qy = F.log_softmax(self.classifier(xl), dim=-1).gather(1, yl[:, None])[:, 0]
        return -self.unlabelled_bound(xu).mean() - labelled.mean() - alpha * log_qy.mean()


def build(spec: RowSpec) -> nn.Module:
    """The networks of a row, with PyTorch's default initialization (global RNG)."""
    if spec.arch == "mlp1":
        encoder = GaussianHead(mlp([PIXELS, 200, 200], 2 * spec.latent, nn.Tanh))
        return OneLayer(encoder, mlp([spec.latent, 200, 200], PIXELS, nn.Tanh))
    if spec.arch == "mlp2":
        return TwoLayer()
    if spec.arch == "gated":
        encoder = GaussianHead(gated_net(PIXELS, 300, 2 * spec.latent))
        return OneLayer(encoder, gated_net(spec.latent, 300, PIXELS), spec.pseudo_inputs)
    if spec.arch == "m2":
        return M2(latent=spec.latent)
    raise ValueError(f"unknown arch {spec.arch!r}")


# ---------------------------------------------------------------------------------------------
# training, checkpoints, evaluation


class Twin:
    """A row's model, optimizer and data stream, trained epoch by epoch and resumable exactly.

    ``x_train``: (N, 784) gray values in [0, 1]; each batch is binarized afresh with
    ``torch.bernoulli`` (global RNG, as is the model's sampling). A ``torch.Generator`` seeded
    with ``seed`` orders the batches. M2 also needs ``y_train``: (N,) int64 and ``labelled``:
    (L,) int64 indices of the labelled points; the others are the unlabelled set.
    """

    def __init__(
        self,
        row: str,
        seed: int,
        x_train: torch.Tensor,
        *,
        y_train: torch.Tensor | None = None,
        labelled: torch.Tensor | None = None,
    ) -> None:
        self.spec = ROWS[row]
        self.seed = seed
        self.x_train = x_train
        self.device = x_train.device
        self.epoch = 0
        self.seconds = 0.0
        torch.manual_seed(seed)
        self.model = build(self.spec).to(self.device)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=learning_rate(self.spec, 1),
            betas=(0.9, 0.999),
            eps=self.spec.adam_eps,
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.label_queue = torch.zeros(0, dtype=torch.long)  # M2: labelled indices still to use
        if self.spec.arch == "m2":
            if y_train is None or labelled is None:
                raise ValueError("m2 needs y_train and labelled")
            self.y_train = y_train.to(self.device)
            self.labelled = labelled.cpu()
            is_unlabelled = torch.ones(x_train.shape[0], dtype=torch.bool)
            is_unlabelled[self.labelled] = False
            self.unlabelled = is_unlabelled.nonzero()[:, 0]

    # -- training ---------------------------------------------------------------------------

    def train_to(self, epochs: int, on_epoch: Callable[[int, dict], None] | None = None) -> None:
        """Train from ``self.epoch`` to ``epochs``; ``on_epoch(epoch, {"loss": ...})`` after each.

        The loss is the mean over the epoch's points of the per-point training loss (for M2:
        each step's loss weighted by its number of unlabelled points).
        """
        self.model.train()
        while self.epoch < epochs:
            start = time.perf_counter()
            epoch = self.epoch + 1
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.spec, epoch)
            loss = self._m2_epoch() if self.spec.arch == "m2" else self._epoch(epoch)
            self.epoch = epoch
            self.seconds += time.perf_counter() - start
            if on_epoch is not None:
                on_epoch(epoch, {"loss": loss})

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _epoch(self, epoch: int) -> float:
        """One pass in a fresh order; per batch: loss = mean_n(-objective), one Adam step."""
        n, b = self.x_train.shape[0], self.spec.batch_size
        order = torch.randperm(n, generator=self.generator).to(self.device)
        steps = math.ceil(n / b)
        total = torch.zeros((), device=self.device)
        for step, idx in enumerate(order.split(b)):
            x = torch.bernoulli(self.x_train[idx])
            beta = kl_weight(self.spec, epoch, step, steps)
            loss = -objective(self.model, x, self.spec.k, beta).mean()
            self._step(loss)
            total += loss.detach() * idx.numel()
        return total.item() / n

    def _labelled_batch(self) -> torch.Tensor:
        """The next min(batch, L) labelled indices from fresh permutations of L, cycled."""
        b = min(self.spec.batch_size, self.labelled.numel())
        while self.label_queue.numel() < b:
            perm = self.labelled[torch.randperm(self.labelled.numel(), generator=self.generator)]
            self.label_queue = torch.cat([self.label_queue, perm])
        batch, self.label_queue = self.label_queue[:b], self.label_queue[b:]
        return batch.to(self.device)

    def _m2_epoch(self) -> float:
        """One pass over the unlabelled points; each step also takes one labelled batch."""
        b = self.spec.batch_size
        order = self.unlabelled[torch.randperm(self.unlabelled.numel(), generator=self.generator)]
        total = torch.zeros((), device=self.device)
        for iu in order.to(self.device).split(b):
            il = self._labelled_batch()
            xu = torch.bernoulli(self.x_train[iu])
            xl = torch.bernoulli(self.x_train[il])
            loss = self.model.loss(xu, xl, self.y_train[il], self.spec.alpha)
            self._step(loss)
            total += loss.detach() * iu.numel()
        return total.item() / self.unlabelled.numel()

    # -- checkpoints ------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write everything a resumed run needs (tensors, numbers, strings) atomically."""
        state = {
            "row": self.spec.name,
            "seed": self.seed,
            "epoch": self.epoch,
            "seconds": self.seconds,
            "model": dict(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict()["state"],
            "rng": torch.get_rng_state(),
            "generator": self.generator.get_state(),
            "label_queue": self.label_queue,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        tmp = f"{path}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(
        cls,
        path: str | Path,
        x_train: torch.Tensor,
        *,
        y_train: torch.Tensor | None = None,
        labelled: torch.Tensor | None = None,
    ) -> Twin:
        """Rebuild the twin saved at ``path`` so that training continues exactly."""
        state = torch.load(path, weights_only=True, map_location="cpu")
        twin = cls(state["row"], state["seed"], x_train, y_train=y_train, labelled=labelled)
        twin.model.load_state_dict(state["model"])
        optim_state = twin.optimizer.state_dict()
        optim_state["state"] = state["optimizer"]
        twin.optimizer.load_state_dict(optim_state)
        twin.epoch = state["epoch"]
        twin.seconds = state["seconds"]
        twin.generator.set_state(state["generator"])
        twin.label_queue = state["label_queue"]
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and twin.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], twin.device)
        return twin

    # -- evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    def log_likelihood(
        self, x: torch.Tensor, k: int, chunk: int = 100
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Importance-sampled ``log p(x)`` and the ELBO, with the encoder as proposal.

        x: (n, 784) in {0, 1} -> (log_px, elbo), each (n,). With ``log w_j = log p(x, z_j) -
        log q(z_j|x)``, z_1..k ~ q(z|x): ``log_px = logsumexp_j log w_j - log k`` and
        ``elbo = mean_j log w_j`` (beta = 1, no warm-up).

        M2 sums over the C classes exactly, with k draws of z from q(z|x,y) for each y:
        ``log_px = log sum_y (1/k) sum_j p(x, y, z_yj) / q(z_yj|x,y)`` (q(y|x) is not needed),
        ``elbo = sum_y q(y|x) [mean_j log w_yj - log q(y|x)]`` (the unlabelled bound U(x)).

        At most ``chunk`` images and ``SAMPLE_BUDGET`` latent draws (at most 1000 particles
        per image) go through the networks at once. The global RNG is restored afterwards, so
        evaluating does not change the course of training.
        """
        self.model.eval()
        is_m2 = self.spec.arch == "m2"
        fan = self.model.classes if is_m2 else 1  # draws per particle and image
        block = min(k, PARTICLE_BLOCK, max(1, SAMPLE_BUDGET // fan))
        group = max(1, min(chunk, SAMPLE_BUDGET // (fan * block)))
        devices = [self.device] if self.device.type == "cuda" else []
        log_px, elbo = [], []
        with torch.random.fork_rng(devices=devices):
            for xg in x.to(self.device).split(group):
                lw = torch.cat(
                    [self._log_weights(xg, len(kb)) for kb in torch.arange(k).split(block)],
                    dim=-2,
                )  # (k, g) or for M2 (C, k, g)
                per_y = torch.logsumexp(lw, dim=-2) - math.log(k)
                if is_m2:
                    log_qy = F.log_softmax(self.model.classifier(xg), dim=-1).T  # (C, g)
                    log_px.append(torch.logsumexp(per_y, dim=0))
                    elbo.append((log_qy.exp() * (lw.mean(-2) - log_qy)).sum(0))
                else:
                    log_px.append(per_y)
                    elbo.append(lw.mean(-2))
        self.model.train()
        return torch.cat(log_px).cpu(), torch.cat(elbo).cpu()

    def _log_weights(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """log w: (k, n), or (C, k, n) for M2."""
        if self.spec.arch == "m2":
            return self.model.log_weights(x, k)
        log_lik, log_prior, log_q = self.model.terms(x, k)
        return log_lik + log_prior - log_q

    @torch.no_grad()
    def test_error(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """M2: fraction of ``x`` (n, 784) gray values whose ``argmax_y q(y|x)`` is not ``y``."""
        if self.spec.arch != "m2":
            raise ValueError(f"{self.spec.name} has no classifier")
        self.model.eval()
        x, y = x.to(self.device), y.to(self.device)
        wrong = sum(
            (self.model.classifier(xb).argmax(-1) != yb).sum().item()
            for xb, yb in zip(x.split(1000), y.split(1000), strict=True)
        )
        self.model.train()
        return wrong / x.shape[0]
