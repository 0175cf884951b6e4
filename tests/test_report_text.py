"""The printed summaries of the scoring results, whole: the inference report's table (each row
under its label, with what its estimator was asked for), the inference gaps' summary, the latent
usage table; and the k-hat and ArviZ conventions behind the report."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_vae.infer.report as report_module
from pyro_vae.errors import ConfigError
from pyro_vae.infer import LatentUsage, SiteUsage, inference_gaps, log_likelihood
from pyro_vae.infer.ais import AISResult, ais_log_likelihood
from pyro_vae.infer.diagnostics import _arviz, psis_khat
from pyro_vae.infer.gaps import InferenceGaps
from pyro_vae.infer.importance import LogLikelihood
from pyro_vae.infer.report import InferenceReport, inference_report
from pyro_vae.infer.trace import stderr

F64 = torch.float64


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


class Recorded:
    """Stand-ins for the estimators the report calls, with known results, and the calls made."""

    def __init__(self, n: int, m: int):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.n, self.m = n, m
        # the importance-sampling pass over all points (a 4-point set uses these values)
        self.is_result = LogLikelihood(
            per_example=t(-3, -5, -4, -6) if n == 4 else torch.zeros(n, dtype=F64),
            elbo_per_example=t(-4, -6, -5, -9) if n == 4 else torch.zeros(n, dtype=F64),
            ess=torch.ones(n, dtype=F64),
            num_samples=6,
            log_weights=torch.zeros(6, n, dtype=F64),
        )
        self.iwae = t(-3.5, -5.5, -4.5, -6.5) if n == 4 else torch.zeros(n, dtype=F64)
        self.khat = t(0.2, 0.6, 0.9, 0.4) if n == 4 else torch.zeros(n, dtype=F64)
        self.ais = AISResult(
            per_example=t(-2.5, -4.5, -3.5)[:m] if m == 3 else torch.zeros(m, dtype=F64),
            per_example_stderr=t(0.3, 0.4, 0.0)[:m] if m == 3 else torch.zeros(m, dtype=F64),
            acceptance=t(0.5, 0.75) if m == 3 else torch.zeros(m, dtype=F64),
            num_steps=4,
            num_chains=2,
        )
        self.gaps = InferenceGaps(
            log_px=t(-2.5, -4.5, -3.5) if m == 3 else torch.zeros(m, dtype=F64),
            elbo_amortized=t(-4, -6, -5) if m == 3 else torch.zeros(m, dtype=F64),
            elbo_local=t(-3, -5, -3) if m == 3 else torch.zeros(m, dtype=F64),
        )

    def log_likelihood(self, model, guide, *data, **options):
        self.calls.append(("log_likelihood", data, options))
        if options.get("keep_log_weights"):
            return self.is_result
        r = self.is_result
        return LogLikelihood(self.iwae, r.elbo_per_example, r.ess, options["num_samples"])

    def psis_khat(self, log_weights):
        self.calls.append(("psis_khat", (log_weights,), {}))
        return self.khat

    def ais_log_likelihood(self, model, guide, *data, **options):
        self.calls.append(("ais_log_likelihood", data, options))
        return self.ais

    def inference_gaps(self, model, guide, *data, **options):
        self.calls.append(("inference_gaps", data, options))
        return self.gaps

    def install(self, monkeypatch) -> Recorded:
        for name in ("log_likelihood", "psis_khat", "ais_log_likelihood", "inference_gaps"):
            monkeypatch.setattr(report_module, name, getattr(self, name))
        return self


def model(x, y):
    """Never run: the estimators are stand-ins."""


def guide(x, y):
    """Never run: the estimators are stand-ins."""


def family(params):
    return dist.Normal(params, 1.0).to_event(1)


def init_params(x, y):
    return torch.zeros(x.shape[0], 2)


def same_call(call, expected) -> bool:
    """The recorded call is ``expected``: same estimator, the very same tensors (or equal ones),
    the same options."""
    name, data, options = call
    e_name, e_data, e_options = expected
    return (
        name == e_name
        and len(data) == len(e_data)
        and all(torch.equal(a, b) for a, b in zip(data, e_data, strict=True))
        and options.keys() == e_options.keys()
        and all(
            options[k] is v if callable(v) or isinstance(v, torch.Tensor) else options[k] == v
            for k, v in e_options.items()
        )
    )


def assert_calls(calls: list, expected: list) -> None:
    """The recorded calls are the expected ones, in order and no others (``same_call``)."""
    assert len(calls) == len(expected)
    for call, want in zip(calls, expected, strict=True):
        assert same_call(call, want), (call, want)


def test_a_gaps_report_prints_every_row_under_its_label_from_its_own_estimate(monkeypatch):
    """With the estimators' results known (4 points, the first 3 a subset), the whole table by
    hand: ELBO -6 +- sd(2, 0, 1, -3)/2 = 1.080, IWAE-3 -5, IS -4.5 +- sqrt(5/3)/2 = 0.645, the
    subset's IS -4 +- 1/sqrt(3), AIS -3.5 with its Monte Carlo error sqrt(0.3^2 + 0.4^2)/3 =
    0.167 and acceptance 0.625 (no standard error: "-"), the gaps' rows (local ELBO -11/3, gaps
    1/6 and 4/3), and k-hats (0.2, 0.6, 0.9, 0.4): 25% over 0.7, 50% over 0.5, max 0.90."""
    rec = Recorded(n=4, m=3).install(monkeypatch)
    x = torch.arange(20.0).reshape(4, 5)
    y = torch.tensor([0, 1, 0, 1])
    report = inference_report(
        model, guide, x, "gaps", num_samples=6, ks=(1, 3, 6), num_points=3, ais_steps=4,
        ais_chains=2, gap_steps=7, family=family, init_params=init_params, batch_size=2,
        data_plate="points", args=(y,),
    )  # fmt: skip
    assert report.table() == "\n".join(
        [
            "estimate                                nats    stderr  points",
            "ELBO                                  -6.000     1.080       4",
            "IWAE-3                                -5.000     0.645       4",
            "IS (K=6)                              -4.500     0.645       4",
            "IS (K=6), subset                      -4.000     0.577       3",
            "AIS (4 steps x 2 chains), subset      -3.500     0.577       3",
            "AIS Monte Carlo stderr                 0.167         -       3",
            "AIS acceptance rate                    0.625         -       3",
            "log p(x), subset                      -3.500     0.577       3",
            "ELBO (amortized), subset              -5.000     0.577       3",
            "ELBO (local), subset                  -3.667     0.667       3",
            "approximation gap, subset              0.167     0.333       3",
            "amortization gap, subset               1.333     0.333       3",
            "PSIS k-hat: 25.0% of points over 0.7, 50.0% over 0.5, max 0.90",
        ]
    )
    assert report.khat == {"frac_over_0.5": 0.5, "frac_over_0.7": 0.25, "max": 0.9}
    assert report.unreliable
    sub, sub_y = x[:3], y[:3]
    expected = [
        ("log_likelihood", (x, y), {
            "num_samples": 6, "batch_size": 2, "keep_log_weights": True, "data_plate": "points",
        }),
        ("log_likelihood", (x, y), {"num_samples": 3, "batch_size": 2, "data_plate": "points"}),
        ("psis_khat", (rec.is_result.log_weights,), {}),
        ("ais_log_likelihood", (sub, sub_y), {
            "num_steps": 4, "num_chains": 2, "data_plate": "points",
        }),
        ("inference_gaps", (sub, sub_y), {
            "family": family, "init_params": init_params, "num_samples": 6, "num_steps": 7,
            "ais_per_example": rec.ais.per_example, "data_plate": "points",
        }),
    ]  # fmt: skip
    assert_calls(rec.calls, expected)


def test_a_report_asks_its_estimators_for_the_documented_defaults(monkeypatch):
    """Left out: 1000 importance samples, IWAE-5 and IWAE-50, the first 100 points for AIS
    (500 steps, 8 chains) and the gaps (500 steps), each scored in the plate "data"."""
    rec = Recorded(n=101, m=100).install(monkeypatch)
    x = torch.zeros(101, 2)
    report = inference_report(model, guide, x, "gaps", family=family, init_params=init_params)
    assert [(name, n) for name, _, _, n in report.rows] == [
        ("ELBO", 101),
        ("IWAE-5", 101),
        ("IWAE-50", 101),
        ("IS (K=1000)", 101),
        ("IS (K=1000), subset", 100),
        ("AIS (500 steps x 8 chains), subset", 100),
        ("AIS Monte Carlo stderr", 100),
        ("AIS acceptance rate", 100),
        ("log p(x), subset", 100),
        ("ELBO (amortized), subset", 100),
        ("ELBO (local), subset", 100),
        ("approximation gap, subset", 100),
        ("amortization gap, subset", 100),
    ]
    sub = x[:100]
    expected = [
        ("log_likelihood", (x,), {
            "num_samples": 1000, "batch_size": None, "keep_log_weights": True,
            "data_plate": "data",
        }),
        ("log_likelihood", (x,), {"num_samples": 5, "batch_size": None, "data_plate": "data"}),
        ("log_likelihood", (x,), {"num_samples": 50, "batch_size": None, "data_plate": "data"}),
        ("psis_khat", (rec.is_result.log_weights,), {}),
        ("ais_log_likelihood", (sub,), {"num_steps": 500, "num_chains": 8, "data_plate": "data"}),
        ("inference_gaps", (sub,), {
            "family": family, "init_params": init_params, "num_samples": 1000, "num_steps": 500,
            "ais_per_example": rec.ais.per_example, "data_plate": "data",
        }),
    ]  # fmt: skip
    assert_calls(rec.calls, expected)


def test_the_report_table_shows_a_non_finite_stderr_as_a_dash_and_no_khat_line_without_one():
    report = InferenceReport(
        rows=[("a long estimate name", -12.3456, math.inf, 2), ("IS", 1.0, 0.0005, 12345)]
    )
    assert report.table() == "\n".join(
        [
            "estimate                    nats    stderr  points",
            "a long estimate name     -12.346         -       2",
            "IS                         1.000     0.001   12345",
        ]
    )
    assert not report.unreliable


@pytest.mark.parametrize(
    "options, message",
    [
        ({"ais_chains": 0}, "ais_chains must be an integer of at least 1, got 0"),
        (
            {"family": family},
            "the inference gaps need the guide's posterior family and initial parameters, "
            "which this model does not provide; use --method ais",
        ),
        (
            {"init_params": init_params},
            "the inference gaps need the guide's posterior family and initial parameters, "
            "which this model does not provide; use --method ais",
        ),
    ],
    ids=["no chains", "a family without initial parameters", "initial parameters alone"],
)
def test_a_gaps_report_refuses_what_it_cannot_score_with_the_whole_message(
    monkeypatch, options, message
):
    Recorded(n=4, m=3).install(monkeypatch)
    x = torch.zeros(4, 5)
    y = torch.zeros(4)
    with pytest.raises(ConfigError) as info:
        inference_report(
            model, guide, x, "gaps", num_samples=6, ks=(), num_points=3, args=(y,), **options
        )
    assert str(info.value) == message


# --- a real run: each row is its estimator's result under the same random draws ------------

D, L = 4, 2


class Conditional(nn.Module):
    """p(z) = N(0, I), p(x | z, y) = N(W z + b + y c, 0.5^2 I), y a per-point label; the guide
    q(z | x, y) = N(A (x - y c), diag(softplus(r)^2)) from a linear encoder."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.W = torch.randn(D, L, generator=g)
        self.b = torch.randn(D, generator=g)
        self.c = torch.randn(D, generator=g)
        self.enc = nn.Linear(D, 2 * L)
        with torch.no_grad():
            self.enc.weight.copy_(0.3 * torch.randn(2 * L, D, generator=g))
            self.enc.bias.zero_()

    def model(self, x, y):
        with pyro.plate("points", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(L), 1.0).to_event(1))
            loc = z @ self.W.T + self.b + y[..., None] * self.c
            pyro.sample("x", dist.Normal(loc, 0.5).to_event(1), obs=x)

    def family(self, params):
        loc, raw = params.split(L, -1)
        return dist.Normal(loc, nn.functional.softplus(raw) + 1e-6).to_event(1)

    def init_params(self, x, y):
        return self.enc(x - y[:, None] * self.c)

    def guide(self, x, y):
        with pyro.plate("points", x.shape[0]):
            pyro.sample("z", self.family(self.init_params(x, y)))


def nan_free(rows):
    return [(name, mean, None if math.isnan(se) else se, n) for name, mean, se, n in rows]


def test_each_row_of_a_real_gaps_report_is_its_estimator_on_the_same_draws():
    """A program with labels in plate "points", scored in batches of 2: replaying the report's
    passes under its seed gives each row; log p(x) per point is the better of the gaps'
    importance-sampled estimate and AIS (here AIS is better at some points, not all)."""
    prog = Conditional()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, D, generator=g)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    opts = {"data_plate": "points", "batch_size": 2}
    pyro.set_rng_seed(0)
    report = inference_report(
        prog.model, prog.guide, x, "gaps", num_samples=20, ks=(1, 3), num_points=3,
        ais_steps=20, ais_chains=2, gap_steps=2, family=prog.family,
        init_params=prog.init_params, args=(y,), **opts,
    )  # fmt: skip

    pyro.set_rng_seed(0)
    ll = log_likelihood(prog.model, prog.guide, x, y, num_samples=20, keep_log_weights=True, **opts)
    iwae = log_likelihood(prog.model, prog.guide, x, y, num_samples=3, **opts)
    sub, sub_y = x[:3], y[:3]
    ais = ais_log_likelihood(
        prog.model, prog.guide, sub, sub_y, num_steps=20, num_chains=2, data_plate="points"
    )
    gaps = inference_gaps(
        prog.model, prog.guide, sub, sub_y, family=prog.family, init_params=prog.init_params,
        num_samples=20, num_steps=2, data_plate="points",
    )  # fmt: skip
    best = torch.maximum(gaps.log_px, ais.per_example)
    assert bool((ais.per_example > gaps.log_px).any()) and not torch.equal(best, ais.per_example)
    sub_is = ll.per_example[:3]
    expected = [
        ("ELBO", ll.elbo, ll.elbo_stderr, 5),
        ("IWAE-3", iwae.mean, iwae.stderr, 5),
        ("IS (K=20)", ll.mean, ll.stderr, 5),
        ("IS (K=20), subset", float(sub_is.mean()), stderr(sub_is), 3),
        ("AIS (20 steps x 2 chains), subset", ais.mean, ais.stderr, 3),
        ("AIS Monte Carlo stderr", ais.mc_stderr, float("nan"), 3),
        ("AIS acceptance rate", float(ais.acceptance.mean()), float("nan"), 3),
        ("log p(x), subset", float(best.mean()), stderr(best), 3),
        ("ELBO (amortized), subset", float(gaps.elbo_amortized.mean()),
         stderr(gaps.elbo_amortized), 3),
        ("ELBO (local), subset", float(gaps.elbo_local.mean()), stderr(gaps.elbo_local), 3),
        ("approximation gap, subset", float((best - gaps.elbo_local).mean()),
         stderr(best - gaps.elbo_local), 3),
        ("amortization gap, subset", float(gaps.amortization_gap.mean()),
         stderr(gaps.amortization_gap), 3),
    ]  # fmt: skip
    assert nan_free(report.rows) == nan_free(expected)
    khat = psis_khat(ll.log_weights)
    assert report.khat == {
        "frac_over_0.5": float((khat > 0.5).float().mean()),
        "frac_over_0.7": float((khat > 0.7).float().mean()),
        "max": float(khat.max()),
    }


# --- the pieces behind the report's numbers ---------------------------------------------------


def test_inference_gaps_summary_names_each_figure_with_its_mean_and_stderr():
    gaps = InferenceGaps(
        log_px=t(-2.5, -4.5, -3.5), elbo_amortized=t(-4, -6, -5), elbo_local=t(-3, -5, -3)
    )
    third = 1 / math.sqrt(3)
    expected = [
        ("log p(x)", -3.5, third),
        ("ELBO (amortized)", -5.0, third),
        ("ELBO (local)", -11 / 3, 2 / 3),
        ("approximation gap", 1 / 6, 1 / 3),
        ("amortization gap", 4 / 3, 1 / 3),
    ]
    summary = gaps.summary()
    assert list(summary) == [name for name, _, _ in expected]
    for name, mean, se in expected:
        assert summary[name] == pytest.approx((mean, se), abs=1e-12), name


def test_latent_usage_lists_up_to_eight_kl_values_without_an_ellipsis():
    """Eight units are all shown, with nothing after them; nine would end in ", ..."."""
    eight = SiteUsage(
        kl_per_dim=t(0.5, 0.25, 0, 0, 0, 0, 0, 0.125),
        kl=0.875,
        mean_variance=torch.zeros(8, dtype=F64),
        active=torch.tensor([True, True] + [False] * 6),
    )
    one = SiteUsage(kl_per_dim=t(1.5), kl=1.5, mean_variance=t(2.0), active=torch.tensor([True]))
    usage = LatentUsage(
        sites={"z": eight, "u": one},
        mutual_information=0.5,
        num_points=10,
        skipped={},
        threshold=0.01,
        num_samples=4,
        mi_points=10,
        mi_reason=None,
    )
    assert str(usage) == "\n".join(
        [
            "latent usage over 10 points (K=4): 3 of 9 units active (Cov_x E_q[z] > 0.01), "
            "KL 2.375 nats, I(x; z) 0.500 nats (M=10)",
            "  site            active  KL (nats)  KL per dim",
            "  z                  2/8      0.875  0.50, 0.25, 0.00, 0.00, 0.00, 0.00, 0.00, 0.12",
            "  u                  1/1      1.500  1.50",
        ]
    )


def test_khat_counts_weights_as_equal_only_when_their_spread_is_below_1e_4():
    """Spread exactly 1e-4: arviz's k-hat is kept; a little below: -inf (no tail to fit)."""
    steps = torch.linspace(0, 1, 50, dtype=F64)
    at = (steps * 1e-4)[:, None]
    below = (steps * 0.99e-4)[:, None]
    assert float(at.max() - at.min()) == 1e-4
    k = psis_khat(torch.cat([at, below], 1))
    _, arviz_k = _arviz().psislw(at.T.contiguous().numpy())
    arviz_k = float(np.asarray(arviz_k)[0])
    assert math.isfinite(arviz_k) and float(k[0]) == pytest.approx(arviz_k)
    assert float(k[1]) == -math.inf


def test_arviz_is_imported_with_its_future_warnings_hidden_and_others_shown(monkeypatch, tmp_path):
    (tmp_path / "arviz.py").write_text(
        "import warnings\n"
        "warnings.warn('a future change', FutureWarning)\n"
        "warnings.warn('a note', UserWarning)\n"
    )
    monkeypatch.delitem(sys.modules, "arviz", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        az = _arviz()
    assert az.__file__ == str(tmp_path / "arviz.py")
    assert [(w.category, str(w.message)) for w in seen] == [(UserWarning, "a note")]


def test_an_ais_result_reads_as_its_mean_stderr_steps_chains_and_acceptance():
    """The one-line reading of an AIS result: the mean of the points' estimates, its standard
    error over the points (sd / sqrt(N) = 1.768 / sqrt(2)), T, C and the mean acceptance."""
    result = AISResult(
        per_example=torch.tensor([-2.0, -4.5]),
        per_example_stderr=torch.tensor([0.3, 0.4]),
        acceptance=torch.tensor([0.5, 0.75]),
        num_steps=10,
        num_chains=4,
    )
    assert str(result) == (
        "log p(x) ~ -3.250 +- 1.250 nats (AIS, 10 steps, 4 chains, acceptance 0.62)"
    )


def test_the_gaps_of_a_vae_start_at_its_encoder_in_its_posterior_family():
    """``vae_inference_gaps`` is ``inference_gaps`` with the VAE's posterior family and its
    encoder as the starting parameters, figure for figure under one seed."""
    from pyro_vae.infer.gaps import inference_gaps, vae_inference_gaps
    from pyro_vae.models import ModelConfig, build_vae

    torch.manual_seed(0)
    vae = build_vae(ModelConfig(event_shape=(5,), latent_dim=2, hidden=(6,)))
    x = (torch.rand(3, 5, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    options = dict(num_samples=20, elbo_samples=20, num_steps=5, num_particles=2)
    pyro.set_rng_seed(3)
    got = vae_inference_gaps(vae, x, **options)
    pyro.set_rng_seed(3)
    want = inference_gaps(
        vae.model, vae.guide, x, family=vae.posterior, init_params=vae.encoder, **options
    )
    for name in ("log_px", "elbo_amortized", "elbo_local"):
        assert torch.equal(getattr(got, name), getattr(want, name))
