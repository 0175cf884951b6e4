"""Enumerated labels and the M2 semi-supervised VAE: exact sums over classes, the M2 objective
against its terms, exact log p(x) where it is known, shapes and refusals."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pyro.infer
import pytest
import torch
from linear_gaussian import LinearGaussian
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from refusals import whole

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.infer.importance import log_likelihood
from pyro_vae.infer.objectives import make_objective
from pyro_vae.models.config import ModelConfig
from pyro_vae.models.semisupervised import DEFAULT_ALPHA, build_semisupervised, m2_loss
from pyro_vae.train import choose_labelled

F64 = torch.float64


class Mixture:
    """y ~ Cat(pi), w | y ~ N(mu_y, sigma^2 I); y marked for parallel enumeration."""

    def __init__(self, dim: int = 3):
        g = torch.Generator().manual_seed(0)
        self.pi = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
        self.mu = 2 * torch.randn(3, dim, generator=g, dtype=F64)
        self.sigma = 0.8

    def observe(self, name: str, w: torch.Tensor) -> None:
        y = pyro.sample("y", dist.Categorical(self.pi), infer={"enumerate": "parallel"})
        pyro.sample(name, dist.Normal(self.mu[y], self.sigma).to_event(1), obs=w)

    def model(self, w: torch.Tensor) -> None:
        with pyro.plate("data", w.shape[0], dim=-1):
            self.observe("x", w)

    def exact_log_p(self, w: torch.Tensor) -> torch.Tensor:
        components = dist.Normal(self.mu, self.sigma).to_event(1).log_prob(w[:, None])
        return torch.logsumexp(self.pi.log() + components, -1)

    def sample(self, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1)
        y = torch.multinomial(self.pi, n, replacement=True, generator=g)
        return self.mu[y] + self.sigma * torch.randn(n, self.mu.shape[1], generator=g, dtype=F64)


def empty_guide(*args) -> None:
    pass


def test_enumerated_mixture_with_an_empty_guide_is_exact():
    mix = Mixture()
    w = mix.sample(30)
    exact = mix.exact_log_p(w)
    for k in (1, 5):
        ll = log_likelihood(mix.model, empty_guide, w, num_samples=k)
        assert ll.enumerated == ("y",)
        assert torch.allclose(ll.per_example, exact, atol=1e-6, rtol=0)
    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).loss(mix.model, empty_guide, w)
    assert loss == pytest.approx(-float(exact.sum()), abs=1e-6)


def test_enumerated_label_beside_a_guided_continuous_latent_is_exact():
    """x from a linear-Gaussian z (exact guide), w from the enumerated mixture: both exact."""
    mix, lg = Mixture(), LinearGaussian()
    w, x = mix.sample(20), lg.sample_data(20)

    def model(x, w):
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(torch.zeros(lg.L, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.b, lg.s).to_event(1), obs=x)
            mix.observe("w", w)

    def guide(x, w):
        lg.exact_guide(x)

    exact = lg.exact_log_px(x) + mix.exact_log_p(w)
    for k in (1, 10):
        ll = log_likelihood(model, guide, x, w, num_samples=k)
        assert ll.enumerated == ("y",)
        assert torch.allclose(ll.per_example, exact, atol=1e-6, rtol=0)
    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, x, w)
    assert loss == pytest.approx(-float(exact.sum()), abs=1e-6)


CONFIG = ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,))


@pytest.fixture
def m2():
    pyro.set_rng_seed(0)
    return build_semisupervised(CONFIG, num_classes=3, classifier_hidden=(5,))


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(0)
    return torch.bernoulli(torch.full((4, 6), 0.4), generator=g)


def elbo_given_label(m2, x, label: int, z: torch.Tensor) -> torch.Tensor:
    """ELBO(x, y) at the draw z: log p(y) + log p(z) + log p(x | y, z) - log q(z | x, y)."""
    y = torch.full((x.shape[0],), label)
    y1 = m2.one_hot(y)
    return (
        m2.label_prior().log_prob(y1)
        + m2.prior().log_prob(z)
        + m2.decode(z, y).log_prob(x)
        - m2.encode(x, y).log_prob(z)
    )


def test_enumerated_elbo_is_the_explicit_sum_over_labels(m2, x):
    """TraceEnum_ELBO on (model, guide_enumerated) = -sum_n sum_y q(y|x)[ELBO(x, y) - log q(y|x)],
    with each ELBO(x, y) at the z the guide drew for that y."""
    traced = poutine.trace(m2.guide_enumerated)
    pyro.set_rng_seed(1)
    loss = (
        pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
        .differentiable_loss(m2.model, traced, x)
        .detach()
    )
    guide_trace = traced.trace
    assert guide_trace.nodes["y"]["value"].shape == (3, 1, 3)
    z = guide_trace.nodes["z"]["value"]
    assert z.shape == (3, 4, 2)
    with torch.no_grad():
        log_q = m2.classify(x).log_softmax(-1)
        explicit = sum(
            log_q[:, c].exp() * (elbo_given_label(m2, x, c, z[c]) - log_q[:, c]) for c in range(3)
        )
    assert float(loss) == pytest.approx(-float(explicit.sum()), rel=1e-5)
    # The library's ELBO objective switches to TraceEnum_ELBO and draws the same z.
    pyro.set_rng_seed(1)
    value = make_objective("elbo").loss(m2.model, m2.guide_enumerated, x, 1.0)
    assert float(value.loss.detach()) == pytest.approx(float(loss), rel=1e-6)
    assert value.elbo == pytest.approx(-float(loss), rel=1e-6)


def test_labelled_elbo_is_trace_elbo_with_the_label_observed(m2, x):
    y = torch.tensor([0, 2, 1, 2])
    traced = poutine.trace(m2.guide)
    pyro.set_rng_seed(2)
    loss = pyro.infer.Trace_ELBO().loss(m2.model, traced, x, y)
    guide_trace = prune_subsample_sites(traced.trace)
    assert set(guide_trace.stochastic_nodes) == {"z"}  # y is given, not sampled
    z = guide_trace.nodes["z"]["value"]
    with torch.no_grad():
        by_hand = sum(
            torch.where(y == c, elbo_given_label(m2, x, c, z), 0.0) for c in range(3)
        ).sum()
    assert loss == pytest.approx(-float(by_hand), rel=1e-5)
    pyro.set_rng_seed(2)
    assert make_objective("elbo").loss(m2.model, m2.guide, x, 1.0, y).elbo == pytest.approx(
        -loss, rel=1e-6
    )


# The enumerating ELBO, once chosen, warns on labelled batches (nothing to enumerate).
@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_m2_loss_weighs_its_terms_as_documented(m2, x):
    xl = torch.tensor([[1.0, 0, 1, 0, 1, 0], [0, 1, 1, 0, 0, 1]])
    yl = torch.tensor([1, 2])
    alpha = 0.3
    pyro.set_rng_seed(3)
    loss, parts = m2_loss(m2, make_objective("elbo"), x, xl, yl, alpha)
    pyro.set_rng_seed(3)
    objective = make_objective("elbo")
    unlabelled = objective.loss(m2.model, m2.guide_enumerated, x, 1.0)
    labelled = objective.loss(m2.model, m2.guide, xl, 1.0, yl)
    nll = m2.classification_loss(xl, yl)
    expected = unlabelled.loss + (4 / 2) * (labelled.loss + alpha * nll.sum())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["elbo_unlabelled"] == pytest.approx(unlabelled.elbo, rel=1e-6)
    assert parts["elbo_labelled"] == pytest.approx(labelled.elbo, rel=1e-6)
    assert parts["classification_loss"] == pytest.approx(nll.sum().item(), rel=1e-6)
    assert parts["correct"] == float((m2.classify(xl).argmax(-1) == yl).sum())
    per_point = (
        -parts["elbo_unlabelled"] / 4 - parts["elbo_labelled"] / 2 + alpha * nll.mean().item()
    )
    assert loss.item() / 4 == pytest.approx(per_point, rel=1e-5)
    assert DEFAULT_ALPHA == 50.0
    # the labelled bound's weight: 0.25 of it, the rest unchanged
    pyro.set_rng_seed(3)
    weighted, _ = m2_loss(m2, make_objective("elbo"), x, xl, yl, alpha, labelled_weight=0.25)
    expected = unlabelled.loss + (4 / 2) * (0.25 * labelled.loss + alpha * nll.sum())
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    # q(y | x) learns from the unlabelled sum over labels as well as from the cross-entropy.
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m2.classifier.parameters())


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_m2_loss_at_alpha_zero_is_the_two_bounds_without_the_cross_entropy(m2, x):
    """alpha = 0 is accepted (non-negative): the loss is the unlabelled and labelled bounds."""
    xl = torch.tensor([[1.0, 0, 1, 0, 1, 0], [0, 1, 1, 0, 0, 1]])
    yl = torch.tensor([1, 2])
    pyro.set_rng_seed(3)
    loss, parts = m2_loss(m2, make_objective("elbo"), x, xl, yl, 0.0)
    pyro.set_rng_seed(3)
    objective = make_objective("elbo")
    unlabelled = objective.loss(m2.model, m2.guide_enumerated, x, 1.0)
    labelled = objective.loss(m2.model, m2.guide, xl, 1.0, yl)
    expected = unlabelled.loss + (4 / 2) * labelled.loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["classification_loss"] > 0  # reported, though weighted by zero
    pyro.set_rng_seed(3)
    integer_zero, _ = m2_loss(m2, make_objective("elbo"), x, xl, yl, 0)
    assert integer_zero.item() == pytest.approx(expected.item(), rel=1e-6)


def test_one_objective_enumerates_the_pair_that_marks_y_whatever_it_saw_first(m2, x):
    """An objective keeps one Pyro ELBO per model/guide pair: used first on labelled points
    (nothing to enumerate), it still sums y out exactly for the enumerated guide after."""
    objective = make_objective("elbo")
    objective.loss(m2.model, m2.guide, x, 1.0, torch.tensor([0, 1, 2, 0]))
    pyro.set_rng_seed(5)
    ours = objective.loss(m2.model, m2.guide_enumerated, x, 1.0).loss
    pyro.set_rng_seed(5)
    exact = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        m2.model, m2.guide_enumerated, x
    )
    assert torch.allclose(ours, exact)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "found no sample sites configured" on y given
        objective.loss(m2.model, m2.guide, x, 1.0, torch.tensor([0, 1, 2, 0]))


def test_m2_loss_runs_with_vectorized_particles(m2, x):
    loss, parts = m2_loss(m2, make_objective("elbo", 3), x, x[:2], torch.tensor([0, 1]))
    assert torch.isfinite(loss) and math.isfinite(parts["elbo_unlabelled"])


def test_log_likelihood_runs_with_either_guide(m2, x):
    for guide in (m2.guide, m2.guide_enumerated):
        ll = log_likelihood(m2.model, guide, x, num_samples=30)
        assert torch.isfinite(ll.per_example).all() and (ll.per_example < 0).all()
    assert log_likelihood(m2.model, m2.guide_enumerated, x, num_samples=2).enumerated == ("y",)


def ignoring_m2(logits: torch.Tensor):
    """An M2 whose decoder ignores y and z (fixed pixel logits), whose q(y|x) is p(y) and whose
    q(z|x,y) is p(z): every log weight is log p(x), a product of fixed Bernoullis."""
    m2 = build_semisupervised(CONFIG, num_classes=3, classifier_hidden=(5,)).double()
    with torch.no_grad():
        for net in (m2.decoder.net, m2.encoder.net, m2.classifier.net):
            net[-1].weight.zero_()
            net[-1].bias.zero_()
        m2.decoder.net[-1].bias.copy_(logits)
        one = torch.tensor(1 - 1e-6, dtype=F64)
        m2.encoder.net[-1].bias[2:] = torch.log(torch.expm1(one))
    return m2


def labelled_copies_of(r: torch.Tensor):
    """Training data whose two labelled points are both ``r`` with label 0 (a valid split with
    label 0 too): the labelled bound is the same whichever points a task draws."""
    from types import SimpleNamespace

    return SimpleNamespace(
        train=r.expand(2, *r.shape).clone(),
        labels={"train": torch.tensor([0, 0]), "valid": torch.tensor([0])},
    )


def test_log_likelihood_is_exact_for_an_m2_that_ignores_y_and_z(x):
    logits = torch.linspace(-2, 2, 6, dtype=F64)
    m2 = ignoring_m2(logits)
    x = x.double()
    exact = dist.Bernoulli(logits=logits).log_prob(x).sum(-1)
    for guide in (m2.guide, m2.guide_enumerated):
        for k in (1, 20):
            ll = log_likelihood(m2.model, guide, x, num_samples=k)
            assert torch.allclose(ll.per_example, exact, atol=1e-4, rtol=0)
    y = torch.tensor([0, 1, 2, 1])
    joint = log_likelihood(m2.model, m2.guide, x, y, num_samples=5)
    assert torch.allclose(joint.per_example, exact - math.log(3), atol=1e-4, rtol=0)


def test_shapes_and_sites(m2, x):
    y = torch.tensor([0, 2, 1, 2])
    logits = m2.classify(x)
    assert logits.shape == (4, 3) and m2.num_classes == 3 and m2.latent_dim == 2
    assert torch.allclose(
        m2.classification_loss(x, y),
        torch.nn.functional.cross_entropy(logits, y, reduction="none"),
        atol=1e-6,
    )
    assert m2.encode(x).batch_shape == (4,) and m2.encode(x, y).event_shape == (2,)
    assert m2.decode(torch.zeros(5, 4, 2), y).batch_shape == (5, 4)
    assert m2.sample(7).shape == (7, 6)
    assert m2.sample(2, torch.tensor([0, 2])).shape == (2, 2, 6)
    assert m2.sample_per_class(3).shape == (3, 3, 6)
    assert m2.reconstruct(x).shape == (4, 6) and m2.reconstruct(x, y, mean=False).shape == (4, 6)
    assert m2.event_shape == (6,) and m2.likelihood is not None
    for args, latent in (((x,), {"y", "z"}), ((x, y), {"z"})):
        guide_trace = prune_subsample_sites(poutine.trace(m2.guide).get_trace(*args))
        model_trace = prune_subsample_sites(
            poutine.trace(poutine.replay(m2.model, trace=guide_trace)).get_trace(*args)
        )
        assert set(guide_trace.stochastic_nodes) == latent
        assert set(model_trace.observation_nodes) == {"x", "y"} - latent
        for site in list(guide_trace.nodes.values()) + list(model_trace.nodes.values()):
            if site["type"] == "sample":
                assert [(f.name, f.dim) for f in site["cond_indep_stack"]] == [("data", -1)]


def test_refusals(m2, x):
    with pytest.raises(
        ConfigError,
        match=whole("num_classes must be an integer of at least 2, got 1"),
    ):
        build_semisupervised(CONFIG, num_classes=1)
    with pytest.raises(
        ConfigError,
        match=whole(
            "the semi-supervised VAE builds MLP nets (the condition is concatenated to their "
            "inputs), not arch 'conv'; set arch = 'mlp'"
        ),
    ):
        conv = ModelConfig(event_shape=(1, 8, 8), latent_dim=2, hidden=(8,), arch="conv")
        build_semisupervised(conv, num_classes=3)
    with pytest.raises(
        ConfigError,
        match=whole("classifier_hidden must be positive integer widths, got (0,)"),
    ):
        build_semisupervised(CONFIG, num_classes=3, classifier_hidden=(0,))
    vamp = ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,), prior="vamp")
    with pytest.raises(
        ConfigError,
        match=whole(
            "prior VampPrior is built from the encoder, but the semi-supervised VAE's encoder "
            "reads a condition besides x; choose another prior (e.g. 'normal')"
        ),
    ):
        build_semisupervised(vamp, num_classes=3)
    with pytest.raises(
        DataError,
        match=whole("label 3 is outside [0, 3); labels must be class indices 0..2"),
    ):
        m2.model(x, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(
        DataError,
        match=whole("label -2 is outside [0, 3); labels must be class indices 0..2"),
    ):
        m2.classification_loss(x, torch.tensor([0, -2, 1, 0]))
    with pytest.raises(
        DataError,
        match=whole(
            "labels have shape (4, 2); pass integer class indices (batch,) or one-hot rows (batch, "
            "3)"
        ),
    ):
        m2.guide(x, torch.zeros(4, 2))
    with pytest.raises(
        ConfigError,
        match=whole("alpha must be a non-negative finite number, got -1.0"),
    ):
        m2_loss(m2, make_objective("elbo"), x, x[:2], torch.tensor([0, 1]), alpha=-1.0)
    with pytest.raises(
        DataError,
        match=whole("m2_loss needs a non-empty unlabelled and labelled batch, got 4 and 0 points"),
    ):
        m2_loss(m2, make_objective("elbo"), x, x[:0], torch.tensor([], dtype=torch.long))


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_m2_task_weighs_a_smaller_labelled_batch_per_labelled_point():
    """5 unlabelled points against a labelled draw of 2, for the M2 whose every bound is known
    (``ignoring_m2``): U(x) = log p(x), L(r, 0) = log p(r) - log 3, -log q(0 | r) = log 3,
    and q(y | r) picks class 0 (all logits equal). The task's sums, divided by the 5
    unlabelled points as the loop divides them, are per unlabelled point and per labelled
    point; the loss per unlabelled point is -mean U + w (-L) + alpha log 3 (m2_loss)."""

    from pyro_vae.models.semisupervised import SemiSupervisedKind
    from pyro_vae.train.semisupervised import SemiSupervisedTask

    logits = torch.linspace(-2, 2, 6, dtype=F64)
    m2 = ignoring_m2(logits)
    g = torch.Generator().manual_seed(7)
    unlabelled = torch.bernoulli(torch.full((5, 6), 0.5, dtype=F64), generator=g)
    r = torch.tensor([1.0, 0, 0, 1, 1, 0], dtype=F64)
    # every labelled point is r with label 0, so the known answer holds whichever are drawn
    data = labelled_copies_of(r)
    alpha, weight = 0.3, 0.5
    kind = SemiSupervisedKind(labels_per_class=None, alpha=alpha, labelled_weight=weight)
    task = SemiSupervisedTask(m2, make_objective("elbo"), kind=kind, data=data, seed=0)
    value = task.batch_loss(unlabelled, 0.0)
    bernoulli = dist.Bernoulli(logits=logits)
    log_p_u = bernoulli.log_prob(unlabelled).sum(-1)
    labelled_bound = float(bernoulli.log_prob(r).sum()) - math.log(3)
    per_point = {k: float(v) / 5 for k, v in value.sums.items()}
    assert per_point["train_elbo"] == pytest.approx(float(log_p_u.mean()), abs=1e-4)
    assert per_point["train_labelled_elbo"] == pytest.approx(labelled_bound, abs=1e-4)
    assert per_point["train_classification_nll"] == pytest.approx(math.log(3), abs=1e-9)
    assert per_point["train_labelled_accuracy"] == 1.0
    expected = -float(log_p_u.mean()) - weight * labelled_bound + alpha * math.log(3)
    assert value.loss_sum.item() / 5 == pytest.approx(expected, abs=1e-4)


def test_encode_hands_soft_label_rows_to_the_encoder_in_x_s_dtype(m2, x):
    """Float label rows pass through encode cast once, to x's dtype, never through the
    parameters' dtype first. Seen with a float16 M2 under bfloat16 autocast (which computes
    the float16 layers in bfloat16) and float32 x: the row value 1 + 2^-8 + 2^-12 rounds up
    to 1 + 2^-7 in bfloat16, but to 1 + 2^-8 in float16 and then, a tie, down to 1. The
    reference is the posterior of the encoder applied to [x, y] by hand."""
    half = m2.half()
    v = 1 + 2**-8 + 2**-12
    y = torch.tensor([[v, 0.0, 0.0], [0.0, v, 0.0], [0.0, 0.0, v], [v, 0.0, 0.0]])
    assert torch.tensor(v).to(torch.bfloat16).item() == 1 + 2**-7
    assert torch.tensor(v).half().to(torch.bfloat16).item() == 1.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = half.encode(x, y).mean
        want = half.posterior(half.encoder(torch.cat([x, y], -1))).mean
    assert torch.equal(got, want)


def _toy_labels():
    from types import SimpleNamespace

    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    return SimpleNamespace(name="toy", labels={"train": labels, "valid": labels, "test": labels})


def _toy_data(labels=("train", "valid", "test")):
    """Six points of 6 pixels beside the toy labels of the splits named (``None``: no labels
    attribute at all)."""
    from types import SimpleNamespace

    toy = _toy_labels()
    train = torch.rand(6, 6, generator=torch.Generator().manual_seed(0))
    if labels is None:
        return SimpleNamespace(name="toy", train=train)
    return SimpleNamespace(name="toy", train=train, labels={s: toy.labels[s] for s in labels})


def _task(objective, data="toy"):
    from pyro_vae.models import MODELS
    from pyro_vae.train.semisupervised import SemiSupervisedTask

    m2 = build_semisupervised(CONFIG, num_classes=3, classifier_hidden=(5,))
    data = _toy_labels() if data == "toy" else data
    return SemiSupervisedTask(m2, objective, kind=MODELS["m2"](num_classes=3), data=data)


def _m2_kind(**options):
    from pyro_vae.models import MODELS

    return MODELS["m2"](**options)


M2_REFUSALS = [
    (
        "more labels per class than a class has",
        lambda: _m2_kind(labels_per_class=3).for_data(_toy_labels()),
        ConfigError,
        "--labels-per-class 3 asks for more labelled points than class 1 has in the training "
        "split (2); ask for at most 2",
    ),
    (
        "no num_classes",
        lambda: _m2_kind().build(CONFIG),
        ConfigError,
        "m2 needs num_classes (--model-opt num_classes=C; train_run fills it in from the data)",
    ),
    (
        "training without labels",
        lambda: _task(make_objective("elbo"), data=None),
        DataError,
        "semi-supervised training needs the training labels; pass data",
    ),
    (
        "data without training labels",
        lambda: _task(make_objective("elbo"), data=_toy_data(labels=("valid", "test"))),
        DataError,
        "semi-supervised training needs the training labels; pass data",
    ),
    (
        "data without labels",
        lambda: _task(make_objective("elbo"), data=_toy_data(labels=None)),
        DataError,
        "semi-supervised training needs the training labels; pass data",
    ),
    (
        "an objective with no enumerated form",
        lambda: _task(make_objective("iwae", 3)),
        ConfigError,
        "M2 sums the label out of the ELBO exactly (TraceEnum_ELBO); objective 'iwae' has no "
        "enumerated form here: use --objective elbo or meanfield",
    ),
    (
        "a KL weight",
        lambda: _task(make_objective("elbo", beta=0.5)),
        ConfigError,
        "M2's enumerated ELBO is trained with KL weight 1; drop --beta and --warmup",
    ),
    (
        "a warm-up",
        lambda: _task(make_objective("elbo", warmup="linear", warmup_epochs=2)),
        ConfigError,
        "M2's enumerated ELBO is trained with KL weight 1; drop --beta and --warmup",
    ),
    (
        "choosing more labelled points than a class has",
        lambda: choose_labelled(_toy_labels().labels["train"], 3, 0),
        DataError,
        "class 1 has 2 training points, fewer than --labels-per-class 3; ask for at most 2 per "
        "class",
    ),
]


@pytest.mark.parametrize(
    "call, exc_type, message", [c[1:] for c in M2_REFUSALS], ids=[c[0] for c in M2_REFUSALS]
)
def test_m2_refusals_are_checked_whole(call, exc_type, message):
    with pytest.raises(exc_type, match=whole(message)):
        call()


def test_m2_refuses_a_prior_and_posterior_of_different_sizes_whole(m2):
    from pyro_vae.models.semisupervised import SemiSupervisedVAE
    from pyro_vae.parts.posteriors import DiagonalNormal
    from pyro_vae.parts.priors import StandardNormal

    with pytest.raises(
        ValueError,
        match=whole(
            "prior latent_dim 4 differs from posterior latent_dim 2; build both with the same "
            "latent_dim"
        ),
    ):
        SemiSupervisedVAE(
            m2.encoder, m2.decoder, m2.classifier, StandardNormal(4), m2.likelihood,
            DiagonalNormal(2), (6,), 3,
        )  # fmt: skip


def test_classification_loss_normalizes_over_the_classes_for_any_batch_shape(m2, x):
    """-log q(y | x) takes the softmax over the C classes (the last dimension of the logits),
    whatever the batch dimensions in front: a single point (6,) with a scalar label, and
    points stacked (2, 4, 6) with labels (2, 4), give torch's cross-entropy of each point."""
    y = torch.tensor([[0, 2, 1, 2], [1, 1, 0, 2]])
    stacked = torch.stack([x, 1 - x])  # (2, 4, 6)
    with torch.no_grad():
        logits = m2.classify(stacked)  # (2, 4, 3)
        loss = m2.classification_loss(stacked, y)
        single = m2.classification_loss(x[1], torch.tensor(2))
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(8, 3), y.reshape(8), reduction="none"
    )
    assert loss.shape == (2, 4)
    assert torch.allclose(loss.reshape(8), expected, atol=1e-6)
    assert single.shape == ()
    assert single.item() == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits[0, 1], torch.tensor(2))), abs=1e-6
    )


def test_classification_loss_keeps_the_logits_dtype_under_autocast(m2, x):
    """A float32 M2 under bfloat16 autocast classifies in bfloat16: -log q(y | x) is the
    bfloat16 log-softmax of the logits at each label, exactly, in bfloat16 (the one-hot rows
    take the logits' dtype, not the parameters' float32)."""
    y = torch.tensor([0, 2, 1, 2])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m2.classify(x)
        loss = m2.classification_loss(x, y)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.bfloat16
    assert torch.equal(loss, -logits.log_softmax(-1).gather(-1, y[:, None]).squeeze(-1))


def test_the_label_prior_lives_on_the_parameters_device(m2):
    """p(y) = Cat(1/C) is made where the parameters are: for an M2 moved to the meta device
    (shapes, no values; validation off, since it reads values) its logits are a meta (3,)
    tensor, in the parameters' dtype or the one asked for; event (3,), batch ()."""
    meta = m2.to("meta")
    with pyro.validation_enabled(False):
        prior = meta.label_prior()
        wide = meta.label_prior(F64)
    assert prior.logits.device.type == "meta" and wide.logits.device.type == "meta"
    assert prior.logits.shape == (3,) and prior.event_shape == (3,) and prior.batch_shape == ()
    assert prior.logits.dtype == torch.float32 and wide.logits.dtype == F64


def test_the_labelled_subset_is_chosen_with_seed_0_unless_another_is_given():
    """One point per class of the toy labels (0, 0, 0, 1, 1, 2): without a seed the task
    takes points 2, 4 and 5, the choice of seed 0 (seed 1 takes 1, 3 and 5), and their rows."""
    from pyro_vae.models import MODELS
    from pyro_vae.train.semisupervised import SemiSupervisedTask

    m2 = build_semisupervised(CONFIG, num_classes=3, classifier_hidden=(5,))
    kind = MODELS["m2"](num_classes=3, labels_per_class=1)
    data = _toy_data()
    task = SemiSupervisedTask(m2, make_objective("elbo"), kind=kind, data=data)
    assert task.run_record == {"labelled_points": [2, 4, 5]}
    assert torch.equal(task.labelled_x, data.train[[2, 4, 5]])
    assert task.labelled_y.tolist() == [0, 1, 2]
    other = SemiSupervisedTask(m2, make_objective("elbo"), kind=kind, data=data, seed=1)
    assert other.run_record == {"labelled_points": [1, 3, 5]}


def test_an_m2_task_whose_objective_gained_a_kl_weight_refuses_the_step_whole():
    """The KL weight is checked again at each step: an M2 task whose objective was swapped for
    one with beta 0.5 after it was built refuses to compute a batch's loss."""
    from pyro_vae.train.semisupervised import SemiSupervisedTask

    m2 = build_semisupervised(CONFIG, num_classes=3, classifier_hidden=(5,))
    kind = _m2_kind(num_classes=3, labels_per_class=1)
    task = SemiSupervisedTask(m2, make_objective("elbo"), kind=kind, data=_toy_data())
    task.objective = make_objective("elbo", beta=0.5)
    with pytest.raises(
        ConfigError,
        match=whole("M2's enumerated ELBO is trained with KL weight 1; drop --beta and --warmup"),
    ):
        task.batch_loss(torch.rand(4, 6), 0.0)


def test_float_label_rows_come_back_in_the_dtype_asked_for(m2, x) -> None:
    """One-hot float64 rows are cast to the dtype asked for (float32 here, also the model's
    default), so the classification loss keeps the model's float32."""
    rows = torch.eye(3, dtype=torch.float64)[[0, 2, 1, 1]]
    expected = torch.eye(3, dtype=torch.float32)[[0, 2, 1, 1]]
    got = m2.one_hot(rows, torch.float32)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert m2.one_hot(rows).dtype == torch.float32
    assert m2.classification_loss(x, rows).dtype == torch.float32


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_an_m2_task_of_a_kind_without_a_labelled_weight_weighs_the_labelled_bound_by_one():
    """A user's kind that names only ``alpha`` and ``labels_per_class`` gets labelled weight
    1: for ``ignoring_m2`` on 3 unlabelled points and the labelled point r (label 0), the loss
    per unlabelled point is -mean log p(x) - (log p(r) - log 3) + alpha log 3."""
    from types import SimpleNamespace

    from pyro_vae.train.semisupervised import SemiSupervisedTask

    logits = torch.linspace(-2, 2, 6, dtype=F64)
    g = torch.Generator().manual_seed(3)
    unlabelled = torch.bernoulli(torch.full((3, 6), 0.5, dtype=F64), generator=g)
    r = torch.tensor([0.0, 1, 1, 0, 1, 0], dtype=F64)
    data = labelled_copies_of(r)
    kind = SimpleNamespace(alpha=0.3, labels_per_class=None)
    task = SemiSupervisedTask(
        ignoring_m2(logits), make_objective("elbo"), kind=kind, data=data, seed=0
    )
    assert task.labelled_weight == 1.0
    bernoulli = dist.Bernoulli(logits=logits)
    log_p_u = float(bernoulli.log_prob(unlabelled).sum(-1).mean())
    labelled_bound = float(bernoulli.log_prob(r).sum()) - math.log(3)
    expected = -log_p_u - labelled_bound + 0.3 * math.log(3)
    loss = task.batch_loss(unlabelled, 0.0).loss_sum.item() / 3
    assert loss == pytest.approx(expected, abs=1e-4)
