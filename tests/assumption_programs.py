"""Small programs that break one assumption each, shared by the refusal tables of AIS
(tests/test_ais.py) and of the inference gaps (tests/test_gaps.py)."""

import pyro
import pyro.distributions as dist
import torch

X = torch.tensor([[-1.5], [-0.2], [0.4], [1.1], [2.7]])


def plain_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


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
