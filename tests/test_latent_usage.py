"""Posterior-collapse diagnostics on models with known answers.

Linear-Gaussian models give every figure in closed form: with the exact posterior as guide,
a zero column of W leaves its latent at the prior (KL 0, posterior mean 0 for every x:
inactive), and the aggregate posterior is the prior, so I(x; z) = -0.5 log det Sigma_post.
"""

from __future__ import annotations

import functools
import json
import math
import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import LinearGaussian
from PIL import Image
from refusals import whole

from pyro_vae.analysis.plots import plot_kl_per_dim
from pyro_vae.errors import DataError
from pyro_vae.infer import LatentUsage, SiteUsage, latent_usage, log_likelihood

F64 = torch.float64


class DiagonalPPCA:
    """p(z) = N(0, I_L), p(x | z) = N(W z + b, s^2 I): W has orthogonal columns, so the exact
    posterior is diagonal, N(v_d w_d^T (x - b) / s^2, v_d) with v_d = 1 / (1 + |w_d|^2 / s^2).
    ``norms``: the column norms; a zero norm is a column the decoder ignores."""

    def __init__(self, norms=(1.5, 0.8, 0.0, 0.0), data_dim=6, s=0.5, seed=0):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(data_dim, len(norms), generator=g, dtype=F64))
        self.W = q * torch.tensor(norms, dtype=F64)
        self.b = torch.randn(data_dim, generator=g, dtype=F64)
        self.s, self.L = s, len(norms)
        self.var = 1 / (1 + (self.W**2).sum(0) / s**2)

    def model(self, x):
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.L, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.s).to_event(1), obs=x)

    def post_mean(self, x):
        return (x - self.b) @ self.W / self.s**2 * self.var

    def guide(self, x):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(self.post_mean(x), self.var.sqrt()).to_event(1))

    def flow_guide(self, x):
        """The same posterior as an affine flow: no ``.mean``, no closed-form KL."""
        base = dist.Normal(torch.zeros(x.shape[0], self.L, dtype=F64), 1.0).to_event(1)
        affine = dist.transforms.AffineTransform(self.post_mean(x), self.var.sqrt(), event_dim=1)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.TransformedDistribution(base, [affine]))

    def sample(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.L, generator=g, dtype=F64)
        eps = torch.randn(n, self.W.shape[0], generator=g, dtype=F64)
        return z @ self.W.T + self.b + self.s * eps

    def kl_per_dim(self, x):
        """Data-average KL(N(m_d, v_d) || N(0, 1)) per dimension."""
        m = self.post_mean(x)
        return (0.5 * (self.var + m**2 - 1 - self.var.log())).mean(0)


def test_ppca_kl_per_dim_and_active_units_are_exact():
    ppca = DiagonalPPCA()
    x = ppca.sample(500)
    # the guide is the exact posterior: its covariance is (I + W^T W / s^2)^-1
    exact_cov = torch.linalg.inv(torch.eye(4, dtype=F64) + ppca.W.T @ ppca.W / ppca.s**2)
    torch.testing.assert_close(torch.diag(ppca.var), exact_cov)
    usage = latent_usage(ppca.model, ppca.guide, x, num_samples=8)
    site = usage.sites["z"]
    assert site.kl_method == "analytic" and site.mean_method == "mean" and site.reason is None
    expected = ppca.kl_per_dim(x)
    assert expected[:2].min() > 0.5  # the used dimensions carry information
    assert site.kl_per_dim[2:].abs().max() < 1e-5
    torch.testing.assert_close(site.kl_per_dim, expected, atol=1e-4, rtol=0)
    assert site.kl == pytest.approx(float(expected.sum()), abs=1e-4)
    assert site.mean_variance[2:].abs().max() < 1e-12
    torch.testing.assert_close(site.mean_variance, ppca.post_mean(x).var(0, correction=0))
    assert site.active.tolist() == [True, True, False, False]
    assert (usage.active_units, usage.num_units, usage.num_points) == (2, 4, 500)
    assert not usage.collapsed  # exactly half inactive is not "more than half"


def test_flow_guide_falls_back_to_monte_carlo_and_sample_means():
    ppca = DiagonalPPCA()
    x = ppca.sample(300)
    # sample means add Var_q(z_u) / K to Cov_x E_q[z_u]: K = 256 keeps it under 0.01
    usage = latent_usage(ppca.model, ppca.flow_guide, x, num_samples=256)
    site = usage.sites["z"]
    assert site.kl_per_dim is None and "TransformedDistribution" in site.reason
    assert (site.kl_method, site.mean_method) == ("monte carlo", "samples")
    assert site.kl == pytest.approx(float(ppca.kl_per_dim(x).sum()), abs=0.03)
    assert site.active.tolist() == [True, True, False, False]


class Hierarchical:
    """z2 ~ N(0, I_2), z1 | z2 ~ N(A z2, a^2 I_3), x | z1 ~ N(W z1 + b, s^2 I_5), with a
    bottom-up linear guide q(z1 | x) = N(E x + e, diag t1^2), q(z2 | z1) = N(F z1 + f, t2^2):
    the exact conditionals' means and marginal standard deviations (diagonal: not exact)."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.A, self.a = torch.randn(3, 2, generator=g, dtype=F64), 0.6
        self.W = torch.randn(5, 3, generator=g, dtype=F64)
        self.b, self.s = torch.randn(5, generator=g, dtype=F64), 0.5
        c1 = self.A @ self.A.T + self.a**2 * torch.eye(3, dtype=F64)  # Cov(z1)
        cx = self.W @ c1 @ self.W.T + self.s**2 * torch.eye(5, dtype=F64)  # Cov(x)
        self.E = torch.linalg.solve(cx, self.W @ c1)  # E[z1 | x] = E^T (x - b)
        self.e = -self.b @ self.E
        self.t1 = (c1 - c1 @ self.W.T @ self.E).diagonal().sqrt()
        self.F = torch.linalg.solve(c1, self.A)  # E[z2 | z1] = F^T z1
        self.f = torch.zeros(2, dtype=F64)
        self.t2 = (torch.eye(2, dtype=F64) - self.A.T @ self.F).diagonal().sqrt()

    def model(self, x):
        with pyro.plate("data", x.shape[0], dim=-1):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z2 @ self.A.T, self.a).to_event(1))
            pyro.sample("x", dist.Normal(z1 @ self.W.T + self.b, self.s).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0], dim=-1):
            z1 = pyro.sample("z1", dist.Normal(x @ self.E + self.e, self.t1).to_event(1))
            pyro.sample("z2", dist.Normal(z1 @ self.F + self.f, self.t2).to_event(1))

    def sample(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z2 = torch.randn(n, 2, generator=g, dtype=F64)
        z1 = z2 @ self.A.T + self.a * torch.randn(n, 3, generator=g, dtype=F64)
        return z1 @ self.W.T + self.b + self.s * torch.randn(n, 5, generator=g, dtype=F64)

    def kl_per_dim(self, x):
        """E_q[log q_d - log p_d] per dimension of each site, under the guide's joint q."""
        m1 = x @ self.E + self.e  # (N, 3)
        m2 = m1 @ self.F + self.f  # (N, 2): mean of z2 = F^T z1 + f
        Ft = self.F.T  # z2 = Ft z1 + f + t2 eps
        c2 = Ft @ torch.diag(self.t1**2) @ Ft.T  # Cov(Ft z1) given x
        kl2 = -self.t2.log() + 0.5 * (self.t2**2 + m2**2 + c2.diagonal()) - 0.5
        # r = z1 - A z2 = (I - A Ft) z1 - A f - A t2 eps, jointly Gaussian under q
        B = torch.eye(3, dtype=F64) - self.A @ Ft
        mr = m1 @ B.T - self.A @ self.f
        vr = B @ torch.diag(self.t1**2) @ B.T + self.A @ torch.diag(self.t2**2) @ self.A.T
        kl1 = (math.log(self.a) - self.t1.log() - 0.5) + (mr**2 + vr.diagonal()) / (2 * self.a**2)
        return kl1.mean(0), kl2.mean(0)


def test_hierarchical_sites_against_closed_form():
    h = Hierarchical()
    x = h.sample(400)
    usage = latent_usage(h.model, h.guide, x, num_samples=64)
    assert list(usage.sites) == ["z1", "z2"]
    z1, z2 = usage.sites["z1"], usage.sites["z2"]
    kl1, kl2 = h.kl_per_dim(x)
    # z1's model parent z2 is drawn after it by the guide: only Monte Carlo is unbiased
    assert (z1.kl_method, z2.kl_method) == ("monte carlo", "analytic")
    torch.testing.assert_close(z1.kl_per_dim, kl1, atol=0.03, rtol=0.02)
    torch.testing.assert_close(z2.kl_per_dim, kl2, atol=0.02, rtol=0.02)
    assert usage.kl == pytest.approx(float(kl1.sum() + kl2.sum()), rel=0.02)
    # z1 has no sampled parents in the guide: its posterior mean is exact
    torch.testing.assert_close(z1.mean_variance, (x @ h.E + h.e).var(0, correction=0))
    m2 = (x @ h.E + h.e) @ h.F + h.f
    torch.testing.assert_close(z2.mean_variance, m2.var(0, correction=0), rtol=0.05, atol=1e-3)
    assert usage.num_units == 5
    assert math.isfinite(usage.mutual_information) and usage.mutual_information > 0

    def top_down_guide(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            z2 = pyro.sample("z2", dist.Normal((x @ h.E) @ h.F, h.t2).to_event(1))
            pyro.sample("z1", dist.Normal(x @ h.E + h.e + 0.1 * z2 @ h.A.T, h.t1).to_event(1))

    # the guide draws z1's model parent z2 first: the closed form is unbiased for both
    top_down = latent_usage(h.model, top_down_guide, x[:50], num_samples=2)
    assert [s.kl_method for s in top_down.sites.values()] == ["analytic", "analytic"]


def test_mutual_information_matches_closed_form_and_vanishes_when_collapsed():
    lg = LinearGaussian(latent_dim=2, data_dim=5, scale=1.0)
    x = lg.sample_data(1000)
    usage = latent_usage(lg.model, lg.exact_guide, x, num_samples=4)
    exact = float(-0.5 * torch.logdet(lg.post_cov))  # H(z) - H(z | x), aggregate = prior
    assert 1.0 < exact < 3.0
    assert usage.mi_points == 1000 and usage.mi_reason is None
    assert usage.mutual_information == pytest.approx(exact, rel=0.05)
    site = usage.sites["z"]
    assert site.kl_per_dim is None and "MultivariateNormal" in site.reason
    assert site.kl_method == "monte carlo"

    lg.W.zero_()  # the decoder ignores z: the exact posterior is the prior for every x
    lg.post_cov = torch.eye(2, dtype=F64)
    lg.post_tril = torch.eye(2, dtype=F64)
    collapsed = latent_usage(lg.model, lg.exact_guide, x[:300], num_samples=4)
    assert abs(collapsed.mutual_information) < 1e-6
    assert collapsed.active_units == 0 and collapsed.collapsed


def test_mutual_information_tiles_the_data_for_a_guide_that_needs_matching_batches():
    ppca = DiagonalPPCA()
    x = ppca.sample(200)

    def strict(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(ppca.post_mean(x), ppca.var.sqrt()).to_event(1))
        if z.shape[-2] != x.shape[0]:
            raise RuntimeError(f"z {tuple(z.shape)} does not line up with x {tuple(x.shape)}")

    pyro.set_rng_seed(5)
    plain = latent_usage(ppca.model, ppca.guide, x, num_samples=2)
    pyro.set_rng_seed(5)
    tiled = latent_usage(ppca.model, strict, x, num_samples=2)
    assert tiled.mi_reason is None
    assert tiled.mutual_information == pytest.approx(plain.mutual_information, abs=1e-9)
    exact = float(-0.5 * ppca.var.log().sum())
    assert plain.mutual_information == pytest.approx(exact, rel=0.1)


def test_mutual_information_names_the_failure_of_each_way_to_score_other_points_whole():
    """A guide with one fixed location per data point (no encoder) and a check that each draw
    lines up with the batch: its latent usage is measured, but scoring q(z | x_m) at the draws
    of other points fails both ways, the draws on the particle dimension (the check) and the
    points tiled along the data plate (more rows than locations). I(x; z) is then nan, and the
    reason lists both failures in order, separated by "; "."""
    ppca = DiagonalPPCA()
    x = ppca.sample(20)
    locs = ppca.post_mean(x)

    def table_guide(x):
        if x.shape[0] > locs.shape[0]:
            raise ValueError(f"{x.shape[0]} rows for {locs.shape[0]} locations")
        with pyro.plate("data", x.shape[0], dim=-1):
            loc = locs[: x.shape[0]]
            z = pyro.sample("z", dist.Normal(loc, ppca.var.sqrt()).to_event(1))
        if z.shape[-2] != x.shape[0]:
            raise RuntimeError(f"z {tuple(z.shape)} does not line up with x {tuple(x.shape)}")

    pyro.set_rng_seed(0)
    usage = latent_usage(ppca.model, table_guide, x, num_samples=2)
    assert math.isnan(usage.mutual_information)
    assert usage.mi_reason == (
        "the guide cannot be scored at the latent values of other points (vectorized: z "
        "(20, 1, 4) does not line up with x (20, 6); replicate: 400 rows for 20 locations)"
    )
    assert usage.sites["z"].kl_method == "analytic"


CENTRES = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 6.0]], dtype=F64)
CODES = torch.tensor([[-10.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=F64)


def labelled_model(x):
    with pyro.plate("data", x.shape[0], dim=-1):
        y = pyro.sample("y", dist.Categorical(logits=torch.zeros(3, dtype=F64)))
        z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(CENTRES[y] + 0.1 * z, 1.0).to_event(1), obs=x)


def labelled_guide(x, enumerate=None):
    with pyro.plate("data", x.shape[0], dim=-1):
        logits = -8.0 * ((x.unsqueeze(-2) - CENTRES) ** 2).sum(-1)
        y = pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": enumerate})
        pyro.sample("z", dist.Normal(CODES[y], 0.1).to_event(1))


def labelled_data(n=300):
    g = torch.Generator().manual_seed(3)
    y = torch.arange(n) % 3
    return CENTRES[y] + 0.3 * torch.randn(n, 2, generator=g, dtype=F64)


@pytest.mark.parametrize("enumerate", [None, "parallel"])
def test_discrete_label_is_skipped_and_summed_out_of_q(enumerate):
    x = labelled_data()
    guide = functools.partial(labelled_guide, enumerate=enumerate)
    usage = latent_usage(labelled_model, guide, x, num_samples=4)
    assert list(usage.sites) == ["z"] and list(usage.skipped) == ["y"]
    assert "discrete" in usage.skipped["y"] and "Categorical" in usage.skipped["y"]
    # q(y | x) picks x's cluster and q(z | x, y) sits at far-apart codes: z carries the label,
    # I(x; z) = H(y) = log 3 with y summed out of q(z | x_m)
    assert usage.mutual_information == pytest.approx(math.log(3), abs=1e-3)
    assert usage.sites["z"].active_units == 2
    assert "skipped y: discrete" in str(usage)


def test_refuses_a_guide_without_continuous_latents():
    def model(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            y = pyro.sample("y", dist.Categorical(logits=torch.zeros(3, dtype=F64)))
            pyro.sample("x", dist.Normal(CENTRES[y], 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("y", dist.Categorical(logits=torch.zeros(x.shape[0], 3, dtype=F64)))

    with pytest.raises(
        DataError,
        match=whole(
            "the guide has no continuous latent site ('y' is discrete (Categorical): KL per "
            "dimension, active units and I(x; z) are reported for continuous latents); latent "
            "usage measures continuous latents"
        ),
    ) as err:
        latent_usage(model, guide, labelled_data(30))
    assert "'y'" in str(err.value) and "\n" not in str(err.value)


def test_refuses_a_prior_conditioned_on_a_site_summed_out_in_the_model_only():
    def model(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            y = pyro.sample(
                "y", dist.Categorical(logits=torch.zeros(3, dtype=F64)),
                infer={"enumerate": "parallel"},
            )  # fmt: skip
            z = pyro.sample("z", dist.Normal(CODES[y], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(x, 1.0).to_event(1))

    with pytest.raises(
        DataError,
        match=whole(
            "latent site 'z' has a prior that depends on 'y', which the model sums out and the "
            "guide does not sample, so q(y | x) and the KL of 'z' are not defined; sample 'y' in "
            "the guide"
        ),
    ) as err:
        latent_usage(model, guide, labelled_data(30))
    assert "\n" not in str(err.value)

    def mixture_model(x):  # y picks x's centre only: z's prior is defined without q(y | x)
        with pyro.plate("data", x.shape[0], dim=-1):
            y = pyro.sample(
                "y", dist.Categorical(logits=torch.zeros(3, dtype=F64)),
                infer={"enumerate": "parallel"},
            )  # fmt: skip
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(CENTRES[y] + z, 1.0).to_event(1), obs=x)

    usage = latent_usage(mixture_model, guide, labelled_data(30), num_samples=2)
    assert list(usage.sites) == ["z"] and "summed out in the model" in usage.skipped["y"]


def test_point_mass_guide_and_a_discrete_site_without_finite_support():
    def model(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            k = pyro.sample("k", dist.Poisson(torch.tensor(3.0, dtype=F64)))
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z + k.unsqueeze(-1), 1.0).to_event(1), obs=x)

    def guide(x, point=False):
        with pyro.plate("data", x.shape[0], dim=-1):
            k = pyro.sample("k", dist.Poisson(x.abs().mean(-1) + 1))
            loc = x - k.unsqueeze(-1)
            pyro.sample(
                "z", dist.Delta(loc, event_dim=1) if point else dist.Normal(loc, 1.0).to_event(1)
            )

    x = labelled_data(30)
    usage = latent_usage(model, guide, x, num_samples=2)
    assert math.isnan(usage.mutual_information) and "'k'" in usage.mi_reason
    assert "no finite support" in usage.mi_reason and "Poisson" in usage.skipped["k"]
    point = latent_usage(model, functools.partial(guide, point=True), x, num_samples=2)
    site = point.sites["z"]
    assert site.kl == math.inf and site.kl_per_dim is None and "point mass" in site.reason
    assert site.active_units == 2  # the codes still vary with x
    assert json.loads(json.dumps(point.to_dict(), allow_nan=False))["kl"] is None


def test_warning_fires_when_most_units_collapse_and_to_dict_is_json():
    collapsed = DiagonalPPCA(norms=(1.2, 0.0, 0.0, 0.0))
    usage = latent_usage(collapsed.model, collapsed.guide, collapsed.sample(200), num_samples=2)
    assert usage.collapsed
    assert usage.warning() == (
        "posterior collapse: 1 of 4 latent units active (z: 1/4); the decoder ignores the "
        "inactive ones; try KL warm-up (--warmup linear --warmup-epochs 50) or free bits "
        "(--free-bits 0.5)"
    )
    active = DiagonalPPCA(norms=(1.5, 1.0, 0.8, 0.6))
    fine = latent_usage(active.model, active.guide, active.sample(200), num_samples=2)
    assert fine.active_units == 4 and not fine.collapsed and fine.warning() is None
    d = json.loads(json.dumps(usage.to_dict(), allow_nan=False))
    assert d["sites"]["z"]["active"] == [True, False, False, False]
    assert d["active_units"] == 1 and d["num_units"] == 4 and len(d["sites"]["z"]["kl_per_dim"])
    assert json.loads(usage.to_json()) == d
    assert isinstance(usage, LatentUsage) and isinstance(usage.sites["z"], SiteUsage)


def test_plot_kl_per_dim_writes_a_png(tmp_path):
    h = Hierarchical()
    usage = latent_usage(h.model, h.guide, h.sample(100), num_samples=8)
    lg = LinearGaussian(latent_dim=2, data_dim=5)
    full = latent_usage(lg.model, lg.exact_guide, lg.sample_data(100), num_samples=4)
    usage.sites["z_full"] = full.sites["z"]  # a site with no per-dimension split
    wide = DiagonalPPCA(norms=[1.0] * 20 + [0.0] * 180, data_dim=200)
    many = latent_usage(wide.model, wide.guide, wide.sample(50), num_samples=1)
    for name, u in (("two", usage), ("many", many)):
        path = plot_kl_per_dim(u, tmp_path / f"{name}.png")
        with Image.open(path) as im:
            assert im.size[0] > 500 and im.size[1] > 200


def test_batch_dimensions_left_of_the_particles_are_refused_whole():
    from pyro_vae.errors import DataError
    from pyro_vae.infer.collapse import _units

    with pytest.raises(
        DataError,
        match=whole(
            "site 'z' has batch dimensions (3, 4, 5) left of the particles; declare batch "
            "dimensions with pyro.plate or .to_event()"
        ),
    ):
        _units(torch.zeros(3, 4, 5), 3, -2, -1, "z")


def test_a_traced_site_with_batch_dimensions_left_of_the_particles_is_refused_by_name():
    """Folding one traced batch of site 'w' whose value (3, 2, 4, 2) has a batch dimension of 3
    left of the particles (2, at dim -2) and the data plate (4, at dim -1) is refused naming
    the site, whole message. (latent_usage's program check refuses such programs earlier; the
    fold is tried on a site built by hand.)"""
    from types import SimpleNamespace

    from pyro_vae.errors import DataError
    from pyro_vae.infer.collapse import _fold_site, _SiteAccumulator

    fn = dist.Normal(torch.zeros(3, 2, 4, 2), 1.0).to_event(1)
    frame = SimpleNamespace(name="data", dim=-1, size=4)
    q_site = {"name": "w", "value": torch.zeros(3, 2, 4, 2), "fn": fn, "cond_indep_stack": (frame,)}
    with pytest.raises(
        DataError,
        match=whole(
            "site 'w' has batch dimensions (3, 2, 4) left of the particles; declare batch "
            "dimensions with pyro.plate or .to_event()"
        ),
    ):
        _fold_site("w", q_site, {"fn": fn}, -2, "data", True, _SiteAccumulator())


def test_latent_usage_prints_its_whole_table():
    """The printed summary of a LatentUsage built by hand, line for line: the totals, the header,
    a factorized site (at most 8 KL values, then "..."), a site without per-unit KL (its
    reason) whose means came from samples (the noise note), a skipped site, and why
    I(x; z) was not estimated."""
    wide = SiteUsage(
        kl_per_dim=torch.tensor([0.5, 0.25, 0, 0, 0, 0, 0, 0, 1.125], dtype=F64),
        kl=1.875,
        mean_variance=torch.zeros(9, dtype=F64),
        active=torch.tensor([True, True] + [False] * 7),
    )
    flow = SiteUsage(
        kl_per_dim=None,
        kl=0.25,
        mean_variance=torch.ones(2, dtype=F64),
        active=torch.tensor([True, True]),
        reason="q does not factorize",
        kl_method="monte carlo",
        mean_method="samples",
    )
    usage = LatentUsage(
        sites={"z": wide, "w": flow},
        mutual_information=float("nan"),
        num_points=10,
        skipped={"y": "discrete"},
        threshold=0.01,
        num_samples=4,
        mi_points=0,
        mi_reason="too few points",
    )
    assert str(usage) == "\n".join(
        [
            "latent usage over 10 points (K=4): 4 of 11 units active (Cov_x E_q[z] > 0.01), "
            "KL 2.125 nats, I(x; z) nan nats (M=0)",
            "  site            active  KL (nats)  KL per dim",
            "  z                  2/9      1.875  0.50, 0.25, 0.00, 0.00, 0.00, 0.00, 0.00, "
            "0.00, ...",
            "  w                  2/2      0.250  - (q does not factorize)",
            "               E_q[z | x] from samples (no .mean): Cov_x includes Var_q(z_u) / 4 "
            "of noise",
            "  skipped y: discrete",
            "  I(x; z) not estimated: too few points",
        ]
    )


def test_latent_usage_to_json_is_its_whole_summary_indented_by_two():
    """A LatentUsage built by hand serializes, key for key and line for line, to the JSON a
    report file holds: the totals, then each site, with non-finite numbers as null."""
    site = SiteUsage(
        kl_per_dim=torch.tensor([0.5, 0.25], dtype=F64),
        kl=0.75,
        mean_variance=torch.tensor([0.125, 0.0], dtype=F64),
        active=torch.tensor([True, False]),
    )
    usage = LatentUsage(
        sites={"z": site},
        mutual_information=float("nan"),
        num_points=10,
        skipped={"y": "discrete"},
        threshold=0.01,
        num_samples=4,
        mi_points=0,
        mi_reason="too few points",
    )
    expected = {
        "num_points": 10,
        "num_samples": 4,
        "threshold": 0.01,
        "active_units": 1,
        "num_units": 2,
        "collapsed": False,
        "kl": 0.75,
        "mutual_information": None,
        "mi_points": 0,
        "mi_reason": "too few points",
        "sites": {
            "z": {
                "kl": 0.75,
                "kl_stderr": None,
                "kl_per_dim": [0.5, 0.25],
                "mean_variance": [0.125, 0.0],
                "active": [True, False],
                "active_units": 1,
                "num_units": 2,
                "reason": None,
                "kl_method": "analytic",
                "mean_method": "mean",
            }
        },
        "skipped": {"y": "discrete"},
    }
    assert usage.to_dict() == expected
    text = usage.to_json()
    assert text.splitlines()[:3] == ["{", '  "num_points": 10,', '  "num_samples": 4,']
    assert text == json.dumps(expected, indent=2)


def test_active_units_over_several_batches_use_the_variance_of_all_points():
    """With batch_size=7 the 50 points pass in 8 uneven batches; the posterior means' variance
    over the data is still that of all 50 points (the exact posterior means' population
    variance), the same as in one pass."""
    ppca = DiagonalPPCA(norms=(1.5, 0.8, 0.0, 0.0))
    x = ppca.sample(50)
    batched = latent_usage(ppca.model, ppca.guide, x, num_samples=2, batch_size=7, mi_points=2)
    whole_pass = latent_usage(ppca.model, ppca.guide, x, num_samples=2, batch_size=50, mi_points=2)
    expected = ppca.post_mean(x).var(0, correction=0)
    torch.testing.assert_close(batched.sites["z"].mean_variance, expected)
    torch.testing.assert_close(whole_pass.sites["z"].mean_variance, expected)
    assert batched.sites["z"].active.tolist() == [True, True, False, False]


class _PlainIndependent(torch.distributions.Independent):
    """A torch distribution made callable for ``pyro.sample``: not a Pyro distribution, so the
    particle plate does not broadcast it and its draws have no particle dimension."""

    def __call__(self) -> torch.Tensor:
        return self.rsample()

    @property
    def event_dim(self) -> int:
        return len(self.event_shape)


def test_a_guide_site_that_draws_one_value_for_all_particles_is_not_read_as_k_draws():
    """A plain torch distribution is not broadcast by the particle plate: with K > 1 its one
    draw would stand for K (log_likelihood's ESS = K, latent usage's KL divided by K). The
    estimator replicates the data instead (K independent draws: here the exact posterior, so
    every weight is log p(x)); vectorized particles and latent usage refuse, naming the site."""
    ppca = DiagonalPPCA()
    x = ppca.sample(20)

    def plain_guide(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], dim=-1):
            normal = torch.distributions.Normal(ppca.post_mean(x), ppca.var.sqrt())
            pyro.sample("z", _PlainIndependent(normal, 1))

    exact = log_likelihood(ppca.model, ppca.guide, x, num_samples=8)
    got = log_likelihood(ppca.model, plain_guide, x, num_samples=8, keep_log_weights=True)
    assert got.strategy == "replicate" and exact.strategy == "vectorized"
    torch.testing.assert_close(got.per_example, exact.per_example, rtol=0, atol=1e-9)
    reason = re.escape(
        "(vectorized: guide site 'z' draws one value for all 2 particles: _PlainIndependent is "
        "not a pyro.distributions class)"
    )
    with pytest.raises(DataError, match=reason):
        log_likelihood(ppca.model, plain_guide, x, num_samples=8, strategy="vectorized")
    with pytest.raises(DataError, match=reason):
        latent_usage(ppca.model, plain_guide, x, num_samples=8)


def test_a_site_that_does_not_factorize_is_named_with_its_side_whole():
    """q a flow (the guide's side) or p a full-rank normal (the model's side): the reason names
    the side and the distribution, whole message, and no KL per dimension is given."""
    ppca = DiagonalPPCA()
    x = ppca.sample(20)
    flow = latent_usage(ppca.model, ppca.flow_guide, x, num_samples=2).sites["z"]
    assert flow.kl_per_dim is None
    assert flow.reason == "q is TransformedDistribution, which does not factorize over dimensions"

    def full_rank_model(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            prior = dist.MultivariateNormal(
                torch.zeros(ppca.L, dtype=F64), torch.eye(ppca.L, dtype=F64)
            )
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(z @ ppca.W.T + ppca.b, ppca.s).to_event(1), obs=x)

    full = latent_usage(full_rank_model, ppca.guide, x, num_samples=2).sites["z"]
    assert full.kl_per_dim is None
    assert full.reason == "p is MultivariateNormal, which does not factorize over dimensions"


def test_keyword_arguments_reach_the_guide_in_every_pass_mutual_information_included():
    """A model and guide that need a keyword-only ``shift`` (the data are centred by it): with
    the data shifted and the shift given, every figure equals that of the unshifted data, same
    seed; I(x; z) included, so the guide's pass on the reference points got the keyword too."""
    ppca = DiagonalPPCA()
    x = ppca.sample(100)
    shift = torch.linspace(-2.0, 3.0, 6, dtype=F64)

    def model(x, *, shift):
        ppca.model(x - shift)

    def guide(x, *, shift):
        ppca.guide(x - shift)

    pyro.set_rng_seed(3)
    plain = latent_usage(ppca.model, ppca.guide, x, num_samples=2)
    pyro.set_rng_seed(3)
    shifted = latent_usage(model, guide, x + shift, num_samples=2, shift=shift)
    assert shifted.mi_reason is None and plain.mi_reason is None
    assert shifted.mutual_information == pytest.approx(plain.mutual_information, abs=1e-9)
    assert shifted.mutual_information == pytest.approx(float(-0.5 * ppca.var.log().sum()), rel=0.1)
    torch.testing.assert_close(shifted.sites["z"].kl_per_dim, plain.sites["z"].kl_per_dim)


def test_a_distribution_without_a_support_is_discrete_when_it_enumerates():
    """A distribution whose ``support`` is not implemented is read as discrete from its
    ``has_enumerate_support`` flag."""
    import pyro.distributions as dist

    from pyro_vae.infer.collapse import _is_discrete

    class NoSupport(dist.TorchDistribution):
        arg_constraints: dict = {}

        def __init__(self, enumerates: bool):
            self.has_enumerate_support = enumerates
            super().__init__(torch.Size(), torch.Size())

        @property
        def support(self):
            raise NotImplementedError

    assert _is_discrete(NoSupport(True)) is True
    assert _is_discrete(NoSupport(False)) is False
