"""The test metrics of a run by name: what ``results.json`` and ``pyro-vae evaluate`` report.

A model kind lists the names of its metrics (``ModelKind.metrics``); each is an entry of
``METRICS``, a function ``(model, data, options) -> dict`` of JSON-ready values per data
point (nats, with standard errors), and a line printer. A plugin adds one with
[`register_metric`][pyro_vae.runs.metrics.register_metric].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch

from pyro_vae.data.binarize import eval_data
from pyro_vae.data.splits import DataSplits
from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.infer.collapse import latent_usage
from pyro_vae.infer.importance import LogLikelihood, log_likelihood
from pyro_vae.infer.sharded import sharded_estimate
from pyro_vae.models.autoencoder import mean_reconstruction_nll
from pyro_vae.models.kinds import kind_of
from pyro_vae.runtime.devices import model_device, resolve_device
from pyro_vae.runtime.distributed import current_group


@dataclass(frozen=True)
class ScoreOptions:
    """How to score: importance samples per point, points per pass, the estimator's seed."""

    num_samples: int = 1000
    batch_size: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class Metric:
    """A test metric: ``compute(model, data, options) -> dict`` and ``lines(results)``."""

    compute: Callable[[Any, DataSplits, ScoreOptions], dict[str, Any]]
    lines: Callable[[dict[str, Any]], list[str]]


#: Metric name -> [`Metric`][pyro_vae.runs.metrics.Metric].
METRICS: dict[str, Metric] = {}


def register_metric(name: str, compute, lines) -> Metric:
    """Register a metric under ``name`` (a model kind lists it in ``metrics``)."""
    METRICS[name] = Metric(compute, lines)
    return METRICS[name]


def test_args(model: Any, data: DataSplits, split: str = "test") -> tuple[torch.Tensor, ...]:
    """The programs' arguments after x for the points of ``split`` (labels), on the model's
    device; ``()`` for a kind whose programs take x alone."""
    device = model_device(model)
    return tuple(a.to(device) for a in kind_of(model).split_args(data, split))


def score(
    model: Any,
    data: DataSplits,
    num_samples: int = 1000,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> LogLikelihood:
    """Test-split importance-sampled log-likelihood (and ELBO) of a trained model.

    On ``device`` (default: where the model is), in float32; the programs get their further
    arguments (labels) for the test points. Under ``torchrun`` the test points are sharded over the
    processes ([`sharded_estimate`][pyro_vae.infer.sharded.sharded_estimate], blocks of
    ``batch_size`` drawn with seeds from ``seed``) and gathered in order.
    """
    if not kind_of(model).scores_likelihood:
        raise ConfigError(
            f"a {kind_of(model).label} has no likelihood p(x) to score; its test metrics are in "
            "results.json"
        )
    model.eval()
    if device is not None:
        model.to(resolve_device(device))
    x = eval_data(model, data.test).to(model_device(model))
    args = test_args(model, data)
    if current_group().distributed:
        return sharded_estimate(
            log_likelihood, model.model, model.guide, x, *args,
            block_size=batch_size or 64, seed=seed, num_samples=num_samples,
        )  # fmt: skip
    return log_likelihood(
        model.model, model.guide, x, *args, num_samples=num_samples, batch_size=batch_size,
    )  # fmt: skip


def summary(result: LogLikelihood) -> dict[str, float]:
    """The test scores of [`score`][pyro_vae.runs.metrics.score] as ``results.json`` records
    them."""
    return {
        "test_log_likelihood": result.mean,
        "test_log_likelihood_stderr": result.stderr,
        "test_elbo": result.elbo,
        "test_elbo_stderr": result.elbo_stderr,
        "num_samples": result.num_samples,
        "num_test_points": int(result.per_example.numel()),
        "mean_ess": float(result.ess.mean()),
        "route": result.route,
    }


def _log_likelihood(model, data: DataSplits, options: ScoreOptions) -> dict[str, Any]:
    return summary(score(model, data, options.num_samples, options.batch_size, seed=options.seed))


def _log_likelihood_lines(r: dict[str, Any]) -> list[str]:
    n = r["num_test_points"]
    elbo, elbo_se = r["test_elbo"], r["test_elbo_stderr"]
    ll, ll_se = r["test_log_likelihood"], r["test_log_likelihood_stderr"]
    return [
        f"test ELBO:           {elbo:9.3f} +- {elbo_se:.3f} nats per data point (n={n})",
        f"test log-likelihood: {ll:9.3f} +- {ll_se:.3f} nats per data point "
        f"(importance sampling, K={r['num_samples']}, mean ESS {r['mean_ess']:.1f})",
    ]


def _reconstruction_nll(model, data: DataSplits, options: ScoreOptions) -> dict[str, Any]:
    model.eval()
    x = eval_data(model, data.test).to(model_device(model))
    nll, nll_se = mean_reconstruction_nll(model, x)
    return {
        "test_reconstruction_nll": nll,
        "test_reconstruction_nll_stderr": nll_se,
        "num_test_points": int(data.test.shape[0]),
    }


def _reconstruction_nll_lines(r: dict[str, Any]) -> list[str]:
    return [
        f"test reconstruction NLL: {r['test_reconstruction_nll']:9.3f} +- "
        f"{r['test_reconstruction_nll_stderr']:.3f} nats per data point "
        f"(n={r['num_test_points']})"
    ]


@torch.no_grad()
def _classification_error(model, data: DataSplits, options: ScoreOptions) -> dict[str, Any]:
    """Test error of the model's classifier ``classify(x) -> logits``: argmax against the
    test labels, with the binomial standard error sqrt(e (1 - e) / n)."""
    model.eval()
    x = eval_data(model, data.test).to(model_device(model))
    y = data.labels["test"].to(x.device)
    wrong = torch.cat(
        [model.classify(x[i : i + 2048]).argmax(-1) != y[i : i + 2048]
         for i in range(0, len(x), 2048)]
    )  # fmt: skip
    error = float(wrong.double().mean())
    return {
        "test_classification_error": error,
        "test_classification_error_stderr": math.sqrt(error * (1 - error) / len(wrong)),
    }


def _classification_error_lines(r: dict[str, Any]) -> list[str]:
    e, se = r["test_classification_error"], r["test_classification_error_stderr"]
    return [f"test classification error: {100 * e:6.2f}% +- {100 * se:.2f}%"]


def _latent_usage(model, data: DataSplits, options: ScoreOptions) -> dict[str, Any]:
    """KL per dimension and layer, active units and I(x; z) on up to 1000 test points."""
    model.eval()
    x = eval_data(model, data.test[:1000]).to(model_device(model))
    args = tuple(a[:1000] for a in test_args(model, data))
    pyro.set_rng_seed(options.seed)  # the same draws as the run's kl_per_dim figure
    with torch.no_grad():
        usage = latent_usage(model.model, model.guide, x, *args)
    return {"latent_usage": usage.to_dict(), "collapse_warning": usage.warning()}


def _latent_usage_lines(r: dict[str, Any]) -> list[str]:
    u = r["latent_usage"]
    mi = u.get("mutual_information")  # None where it could not be estimated (JSON has no NaN)
    # an estimate within rounding of zero prints as 0.000, not -0.000
    mi_text = "undefined" if mi is None else f"{mi + 0.0:.3f} nats".replace("-0.000", "0.000")
    kl = "undefined" if u.get("kl") is None else f"{u['kl']:.3f} nats"
    lines = [
        f"active units:        {u['active_units']} of {u['num_units']} (Cov_x E_q[z] > 0.01); "
        f"KL {kl}; I(x; z) {mi_text}"
    ]
    if r.get("collapse_warning"):
        lines.append(f"warning: {r['collapse_warning']}")
    return lines


register_metric("log_likelihood", _log_likelihood, _log_likelihood_lines)
register_metric("reconstruction_nll", _reconstruction_nll, _reconstruction_nll_lines)
register_metric("classification_error", _classification_error, _classification_error_lines)
register_metric("latent_usage", _latent_usage, _latent_usage_lines)


def test_metrics(model: Any, data: DataSplits, options: ScoreOptions) -> dict[str, Any]:
    """Every metric ``model``'s kind lists, computed on the test split, merged.

    A metric whose estimator refuses the model (a [`PyroVAEError`][pyro_vae.errors.PyroVAEError]
    naming the site and the reason) is recorded as ``refused: {name: reason}`` instead of
    discarding the trained run; the log-likelihood's refusal is raised, as it is the score.
    """
    out: dict[str, Any] = {}
    for name in kind_of(model).metrics:
        if name not in METRICS:
            raise ConfigError(f"unknown metric {name!r}; known metrics: {sorted(METRICS)}")
        try:
            out.update(METRICS[name].compute(model, data, options))
        except PyroVAEError as exc:
            if name == "log_likelihood":
                raise
            out.setdefault("refused", {})[name] = str(exc).strip().splitlines()[0]
    return out


def metric_lines(model_or_kind: Any, results: dict[str, Any]) -> list[str]:
    """The printed lines of the metrics in ``results`` (those the kind lists and reports)."""
    kind = model_or_kind if hasattr(model_or_kind, "metrics") else kind_of(model_or_kind)
    lines: list[str] = []
    for name in kind.metrics:
        try:
            lines += METRICS[name].lines(results)
        except KeyError:
            continue  # a metric a run did not record (an older results.json)
    for name, reason in (results.get("refused") or {}).items():
        lines.append(f"warning: {name} not computed: {reason}")
    return lines


__all__ = [
    "METRICS",
    "Metric",
    "ScoreOptions",
    "metric_lines",
    "register_metric",
    "score",
    "summary",
    "test_args",
    "test_metrics",
]
