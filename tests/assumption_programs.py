"""Small programs that break one assumption each, shared by the refusal tables of AIS
(tests/test_ais.py) and of the inference gaps (tests/test_gaps.py), and the running example
they break: z ~ N(0, 1), x | z ~ N(z, 1), so p(x) = N(0, 2) and p(z | x) = N(x / 2, 1/2), in
the data's dtype (with the exact posterior as guide every importance weight is p(x))."""

import math

import pyro
import pyro.distributions as dist
import torch

X = torch.tensor([[-1.5], [-0.2], [0.4], [1.1], [2.7]])


def exact_log_px(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, 2), x: (N, 1) -> (N,)."""
    return -0.5 * (math.log(2 * math.pi * 2) + x[:, 0] ** 2 / 2)


def plain_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def exact_guide(x, **kwargs):
    """The exact posterior N(x / 2, 1/2); keywords (passed on to both programs) are ignored."""
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)).to_event(1))


def plain_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, 0.7).to_event(1))


def mixture_model(x):
    with pyro.plate("data", x.shape[0]):
        y = pyro.sample("y", dist.OneHotCategorical(torch.tensor([0.5, 0.5])))
        z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z + y[..., :1], 1.0).to_event(1), obs=x)


def mixture_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.OneHotCategorical(logits=torch.zeros(x.shape[0], 2)))
        pyro.sample("z", dist.Normal(x / 2, 1.0).to_event(1))


def two_plate_model(x):
    with pyro.plate("data", x.shape[0]):
        with pyro.plate("two", 2, dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z.sum(0), 1.0).to_event(1), obs=x)


def two_plate_guide(x):
    with pyro.plate("data", x.shape[0]):
        with pyro.plate("two", 2, dim=-2):
            pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
