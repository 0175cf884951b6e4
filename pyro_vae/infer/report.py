"""One table of bounds and estimates for a model/guide pair: ELBO, IWAE-k, IS, AIS, gaps, k-hat."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from pyro_vae.errors import ConfigError
from pyro_vae.infer.ais import ais_log_likelihood
from pyro_vae.infer.diagnostics import KHAT_UNRELIABLE, khat_summary, psis_khat
from pyro_vae.infer.gaps import inference_gaps
from pyro_vae.infer.importance import log_likelihood
from pyro_vae.infer.trace import stderr
from pyro_vae.validation import check_positive_int

METHODS = ("is", "ais", "gaps")


@dataclass
class InferenceReport:
    """Rows (name, mean over data points, standard error, number of points), in nats, and the
    PSIS k-hat summary of the importance-sampled estimate."""

    rows: list[tuple[str, float, float, int]] = field(default_factory=list)
    khat: dict[str, float] = field(default_factory=dict)

    @property
    def unreliable(self) -> bool:
        """True when some data points have k-hat above 0.7."""
        return self.khat.get("frac_over_0.7", 0.0) > 0

    def table(self) -> str:
        width = max(len(r[0]) for r in self.rows)
        lines = [f"{'estimate':<{width}}  {'nats':>10}  {'stderr':>8}  {'points':>6}"]
        for name, mean, se, n in self.rows:
            err = f"{se:8.3f}" if math.isfinite(se) else f"{'-':>8}"
            lines.append(f"{name:<{width}}  {mean:10.3f}  {err}  {n:6d}")
        if self.khat:
            lines.append(
                f"PSIS k-hat: {100 * self.khat['frac_over_0.7']:.1f}% of points over "
                f"{KHAT_UNRELIABLE}, {100 * self.khat['frac_over_0.5']:.1f}% over 0.5, "
                f"max {self.khat['max']:.2f}"
            )
        return "\n".join(lines)


def inference_report(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    method: str = "is",
    *,
    num_samples: int = 1000,
    ks: Sequence[int] = (1, 5, 50),
    num_points: int = 100,
    ais_steps: int = 500,
    ais_chains: int = 8,
    gap_steps: int = 500,
    family: Callable | None = None,
    init_params: Callable | None = None,
    batch_size: int | None = None,
    data_plate: str = "data",
    args: Sequence[torch.Tensor] = (),
) -> InferenceReport:
    """Bounds and estimates of log p(x) per data point, mean and standard error over ``data``.

    data: (N, *event_shape); ``args``: the programs' further per-point inputs (labels (N,)), passed
    after the data to every estimator and sliced with it. ``is``: ELBO, IWAE-k for each k in ``ks``
    (k = 1 is an ELBO estimate), importance sampling with ``num_samples``, and PSIS k-hat. ``ais``
    adds AIS ([`ais_log_likelihood`][pyro_vae.infer.ais.ais_log_likelihood]) and IS on the first
    ``num_points`` points; ``gaps`` adds the inference gaps
    ([`inference_gaps`][pyro_vae.infer.gaps.inference_gaps], which needs the guide's posterior
    ``family`` and ``init_params``) on those points, with AIS in log p(x).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    for name, value in (
        ("num_points (--num-points)", num_points),
        ("ais_steps (--ais-steps)", ais_steps),
        ("ais_chains", ais_chains),
        ("gap_steps (--gap-steps)", gap_steps),
    ):
        check_positive_int(value, name)
    report = InferenceReport()
    n = data.shape[0]
    args = tuple(args)
    ll = log_likelihood(
        model, guide, data, *args, num_samples=num_samples, batch_size=batch_size,
        keep_log_weights=True, data_plate=data_plate,
    )
    report.rows.append(("ELBO", ll.elbo, ll.elbo_stderr, n))
    for k in ks:
        if 1 < k < num_samples:
            r = log_likelihood(
                model, guide, data, *args, num_samples=k, batch_size=batch_size,
                data_plate=data_plate,
            )  # fmt: skip
            report.rows.append((f"IWAE-{k}", r.mean, r.stderr, n))
    report.rows.append((f"IS (K={num_samples})", ll.mean, ll.stderr, n))
    report.khat = khat_summary(psis_khat(ll.log_weights))
    if method == "is":
        return report
    sub = data[:num_points]
    sub_args = tuple(a[:num_points] for a in args)
    m = sub.shape[0]
    sub_is = ll.per_example[:m]
    report.rows.append((f"IS (K={num_samples}), subset", float(sub_is.mean()), stderr(sub_is), m))
    ais = ais_log_likelihood(
        model, guide, sub, *sub_args, num_steps=ais_steps, num_chains=ais_chains,
        data_plate=data_plate,
    )  # fmt: skip
    report.rows.append(
        (f"AIS ({ais_steps} steps x {ais_chains} chains), subset", ais.mean, ais.stderr, m)
    )
    report.rows.append(("AIS Monte Carlo stderr", ais.mc_stderr, float("nan"), m))
    report.rows.append(("AIS acceptance rate", float(ais.acceptance.mean()), float("nan"), m))
    if method == "ais":
        return report
    if family is None or init_params is None:
        raise ConfigError(
            "the inference gaps need the guide's posterior family and initial parameters, "
            "which this model does not provide; use --method ais"
        )
    gaps = inference_gaps(
        model,
        guide,
        sub,
        *sub_args,
        family=family,
        init_params=init_params,
        num_samples=num_samples,
        num_steps=gap_steps,
        ais_per_example=ais.per_example,
        data_plate=data_plate,
    )
    for name, (mean, se) in gaps.summary().items():
        report.rows.append((f"{name}, subset", mean, se, m))
    return report
