"""The M2 semi-supervised VAE's parts against known answers: the nets its builder makes, the
M2 loss of tiny networks computed by hand in float64, the model kind's defaults and refusals,
and the dtypes, devices, shapes and plates of its programs."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from refusals import whole
from torch import nn
from torch.nn.functional import softplus

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.infer.objectives import make_objective
from pyro_vae.models import MODELS, build_model
from pyro_vae.models.config import ModelConfig
from pyro_vae.models.kinds import build_kind
from pyro_vae.models.semisupervised import (
    SemiSupervisedKind,
    SemiSupervisedVAE,
    build_semisupervised,
    m2_loss,
)

F64 = torch.float64
CONFIG = ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,))


def small_m2(seed: int = 0) -> SemiSupervisedVAE:
    pyro.set_rng_seed(seed)
    return build_semisupervised(CONFIG, num_classes=3, classifier_hidden=(5,))


def points(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 6), 0.4), generator=g)


def layout(net: nn.Module) -> list:
    """A net's modules in order: ``(in, out)`` for a linear layer, the class name otherwise."""
    return [
        (m.in_features, m.out_features) if isinstance(m, nn.Linear) else type(m).__name__
        for m in net.net
    ]


def nets_of(m2: SemiSupervisedVAE) -> dict[str, list]:
    return {name: layout(getattr(m2, name)) for name in ("encoder", "decoder", "classifier")}


def test_the_builder_sizes_each_net_and_gives_it_the_activation_asked_for():
    """Encoder [x (6), y (3)] -> hidden -> 4 (mean and scale of a 2-d z); decoder [z (2), y]
    -> mirrored hidden -> 6 Bernoulli logits; classifier x -> classifier_hidden -> 3 logits.
    Every hidden layer has the config's activation; a width of 1 is a width like any other."""
    config = ModelConfig(
        event_shape=(6,), latent_dim=2, hidden=(8, 4), arch_options={"activation": "tanh"}
    )
    m2 = build_semisupervised(config, num_classes=3, classifier_hidden=(5, 1))
    assert nets_of(m2) == {
        "encoder": [(9, 8), "Tanh", (8, 4), "Tanh", (4, 4)],
        "decoder": [(5, 4), "Tanh", (4, 8), "Tanh", (8, 6)],
        "classifier": [(6, 5), "Tanh", (5, 1), "Tanh", (1, 3)],
    }
    plain = build_semisupervised(CONFIG, num_classes=3, classifier_hidden=(1,))
    assert nets_of(plain) == {
        "encoder": [(9, 8), "Softplus", (8, 4)],
        "decoder": [(5, 8), "Softplus", (8, 6)],
        "classifier": [(6, 1), "Softplus", (1, 3)],
    }
    # arch options without an activation (emptied after the config was checked) mean the mlp
    # arch's default, softplus, as for the other models
    bare = ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,))
    bare.arch_options = {}
    assert nets_of(build_semisupervised(bare, num_classes=3)) == {
        "encoder": [(9, 8), "Softplus", (8, 4)],
        "decoder": [(5, 8), "Softplus", (8, 6)],
        "classifier": [(6, 8), "Softplus", (8, 3)],
    }


def test_the_m2_kind_builds_the_classifier_widths_asked_for_from_python_and_from_a_config():
    expected = {
        "encoder": [(9, 8), "Softplus", (8, 4)],
        "decoder": [(5, 8), "Softplus", (8, 6)],
        "classifier": [(6, 5), "Softplus", (5, 1), "Softplus", (1, 3)],
    }
    kind = SemiSupervisedKind(num_classes=3, classifier_hidden=(5, 1))
    assert nets_of(kind.build(CONFIG)) == expected
    config = ModelConfig(
        event_shape=(6,), latent_dim=2, hidden=(8,), kind="m2",
        kind_options={"num_classes": 3, "classifier_hidden": [5, 1]},
    )  # fmt: skip
    assert nets_of(build_model(config)) == expected
    # without classifier_hidden the classifier takes the config's hidden widths
    assert nets_of(SemiSupervisedKind(num_classes=3).build(CONFIG))["classifier"] == [
        (6, 8), "Softplus", (8, 3),
    ]  # fmt: skip


def labels_with_counts(*counts: int) -> SimpleNamespace:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return SimpleNamespace(name="toy", labels={"train": labels, "valid": labels, "test": labels})


def test_the_m2_kind_defaults_are_ten_labels_per_class_alpha_50_and_labelled_weight_1():
    """The defaults as a user meets them: the kind made from Python with no arguments, from
    the registry, and in a config's filled-in options; ten labels per class is what for_data
    asks of the data, and a task of the default kind weighs the labelled bound by 1."""
    from pyro_vae.train.semisupervised import SemiSupervisedTask

    defaults = {
        "labels_per_class": 10,
        "alpha": 50.0,
        "num_classes": None,
        "classifier_hidden": None,
        "labelled_weight": 1.0,
    }
    for kind in (SemiSupervisedKind(), MODELS["m2"](), build_kind("m2")):
        assert {k: getattr(kind, k) for k in defaults} == defaults
    assert ModelConfig(event_shape=(6,), kind="m2").kind_options == defaults
    assert SemiSupervisedKind().for_data(labels_with_counts(10, 10, 10)) == {"num_classes": 3}
    with pytest.raises(
        ConfigError,
        match=whole(
            "--labels-per-class 10 asks for more labelled points than class 2 has in the "
            "training split (9); ask for at most 9"
        ),
    ):
        SemiSupervisedKind().for_data(labels_with_counts(10, 10, 9))
    data = SimpleNamespace(train=torch.rand(6, 6), labels=labels_with_counts(2, 2, 2).labels)
    kind = build_kind("m2", {"num_classes": 3, "labels_per_class": 1})
    task = SemiSupervisedTask(small_m2(), make_objective("elbo"), kind=kind, data=data)
    assert task.labelled_weight == 1.0 and task.alpha == 50.0


def test_the_m2_kind_checks_the_labels_as_model_m2_with_its_own_num_classes():
    """for_data names the kind 'm2' in its refusals and keeps a num_classes larger than the
    labels need (the labels 0..2 fit in 5 classes), refusing one that is too small."""
    no_labels = SimpleNamespace(name="toy", train=torch.rand(6, 6))
    with pytest.raises(
        DataError,
        match=whole(
            "model 'm2' needs labels, but 'toy' has none for the train, valid, test split(s); "
            "use a data set with labels (digits, mnist, fashion-mnist, an .npz with "
            "y_train/y_valid/y_test) or another --model"
        ),
    ):
        SemiSupervisedKind().for_data(no_labels)
    toy = labels_with_counts(3, 2, 1)
    assert SemiSupervisedKind(labels_per_class=None, num_classes=5).for_data(toy) == {
        "num_classes": 5
    }
    assert SemiSupervisedKind(labels_per_class=None).for_data(toy) == {"num_classes": 3}
    with pytest.raises(
        DataError,
        match=whole(
            "labels go up to 2 but model 'm2' has num_classes=2; set num_classes to at least 3 "
            "(--model-opt num_classes=3)"
        ),
    ):
        SemiSupervisedKind(labels_per_class=1, num_classes=2).for_data(toy)


def z_free_m2() -> SemiSupervisedVAE:
    """A float64 M2 whose q(z | x, y) is p(z) = N(0, I) and whose decoder ignores z: every
    bound is exact whatever z is drawn, ELBO(x, y) = log p(y) + log p(x | y)."""
    m2 = small_m2(4).double()
    with torch.no_grad():
        last = m2.encoder.net[-1]
        last.weight.zero_()
        last.bias.zero_()
        last.bias[2:] = math.log(math.expm1(1 - 1e-6))  # softplus(raw) + 1e-6 = 1
        m2.decoder.net[0].weight[:, :2] = 0.0  # the columns that read z
    return m2


def by_hand(m2: SemiSupervisedVAE, x: torch.Tensor):
    """log p(x | y) for each class: (batch, C), and log q(y | x): (batch, C), in float64 from
    the nets' weights."""
    d0, d1 = m2.decoder.net[0], m2.decoder.net[2]
    c0, c1 = m2.classifier.net[0], m2.classifier.net[2]
    # decoder input [z, e_y] with the z columns zero: the hidden layer reads column 2 + y
    pixel_logits = softplus(d0.weight[:, 2:].T + d0.bias) @ d1.weight.T + d1.bias  # (C, 6)
    log_px = (x[:, None] * pixel_logits - softplus(pixel_logits)).sum(-1)
    class_logits = softplus(x @ c0.weight.T + c0.bias) @ c1.weight.T + c1.bias
    log_q = class_logits - torch.logsumexp(class_logits, -1, keepdim=True)
    return log_px.detach(), log_q.detach()


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
@pytest.mark.parametrize("num_unlabelled", [1, 3])
def test_m2_loss_is_the_papers_objective_computed_by_hand(num_unlabelled):
    """loss = -sum_u U(x) - (B_u / B_l) [w sum_l L(x, y) - alpha sum_l log q(y | x)], with
    U(x) = sum_y q(y | x) [log p(y) + log p(x | y) - log q(y | x)] and
    L(x, y) = log p(y) + log p(x | y) (Kingma et al. 2014, eq. 7-9), for an M2 whose bounds
    are exact; a single unlabelled point is a batch like any other."""
    m2 = z_free_m2()
    xu = points(num_unlabelled, seed=1).double()
    xl = points(4, seed=2).double()
    yl = torch.tensor([2, 2, 1, 2])
    alpha, weight = 0.3, 0.5
    pyro.set_rng_seed(0)
    loss, parts = m2_loss(m2, make_objective("elbo"), xu, xl, yl, alpha, weight)
    log_py = -math.log(3)
    log_px_u, log_q_u = by_hand(m2, xu)
    unlabelled = (log_q_u.exp() * (log_py + log_px_u - log_q_u)).sum()
    log_px_l, log_q_l = by_hand(m2, xl)
    rows = torch.arange(4)
    labelled = (log_py + log_px_l[rows, yl]).sum()
    cross_entropy = -log_q_l[rows, yl].sum()
    expected = -unlabelled + (num_unlabelled / 4) * (-weight * labelled + alpha * cross_entropy)
    assert loss.dtype == F64
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
    assert parts.keys() == {"elbo_unlabelled", "elbo_labelled", "classification_loss", "correct"}
    assert parts["elbo_unlabelled"] == pytest.approx(unlabelled.item(), rel=1e-9)
    assert parts["elbo_labelled"] == pytest.approx(labelled.item(), rel=1e-9)
    assert parts["classification_loss"] == pytest.approx(cross_entropy.item(), rel=1e-12)
    correct = float((log_q_l.argmax(-1) == yl).sum())
    assert correct == 2.0 and parts["correct"] == correct


class RecordingObjective:
    """An ELBO objective of the protocol m2_loss names, with fixed sums: each call is
    recorded, the unlabelled program's loss is 10 (ELBO -10), the labelled one's 3 (ELBO -3)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def loss(self, model, guide, x, kl_weight, *args):
        self.calls.append((model, guide, x, kl_weight, args))
        value = 3.0 if args else 10.0
        return torch.tensor(value), -value


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bfloat16 autocast"])
def test_m2_loss_with_a_protocol_objective_adds_the_cross_entropy_of_classification_loss(
    autocast,
):
    """Each program is scored with KL weight 1, and the labelled cross-entropy is the sum of
    classification_loss, bit for bit: in the logits' dtype (bfloat16 under autocast) and
    summed point by point. Its value is -log q(y | x) of the float64 logits, to bfloat16's
    precision."""
    m2 = small_m2(2)
    xu, xl = points(5, seed=3), points(16, seed=4)
    yl = torch.tensor([0, 1, 2, 0, 2, 1, 1, 0, 2, 2, 0, 1, 0, 0, 2, 1])
    objective = RecordingObjective()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, parts = m2_loss(m2, objective, xu, xl, yl, 0.7, 2.0)
        logits = m2.classify(xl)
        nll = m2.classification_loss(xl, yl).sum()
    assert objective.calls == [
        (m2.model, m2.guide_enumerated, xu, 1.0, ()),
        (m2.model, m2.guide, xl, 1.0, (yl,)),
    ]
    assert nll.dtype == (torch.bfloat16 if autocast else torch.float32)
    correct = float((logits.argmax(-1) == yl).sum())
    assert parts == {
        "elbo_unlabelled": -10.0,
        "elbo_labelled": -3.0,
        "classification_loss": float(nll),
        "correct": correct,
    }
    assert torch.equal(loss, torch.tensor(10.0) + (5 / 16) * (2.0 * torch.tensor(3.0) + 0.7 * nll))
    double = m2.double()
    reference = -double.classify(xl.double()).log_softmax(-1)[torch.arange(16), yl].sum()
    assert float(nll) == pytest.approx(reference.item(), rel=1e-2 if autocast else 1e-6)


def test_sample_with_a_single_label_draws_one_point_per_draw():
    """A single label, an integer () or a one-hot row (C,), gives draws (n, *event_shape): the
    mean of p(x | y, z) at n draws of z ~ p(z), the decoder applied to [z, e_y] by hand."""
    m2 = small_m2(2)
    pyro.set_rng_seed(3)
    z = m2.prior().sample((4,))
    with torch.no_grad():
        e1 = torch.tensor([0.0, 1.0, 0.0]).expand(4, 3)
        expected = torch.sigmoid(m2.decoder(torch.cat([z, e1], -1)))
    for label in (torch.tensor(1), torch.tensor([0.0, 1.0, 0.0])):
        pyro.set_rng_seed(3)
        draws = m2.sample(4, label)
        assert draws.shape == (4, 6)
        assert torch.allclose(draws, expected, atol=1e-6, rtol=0)


def test_one_hot_passes_a_float_row_through_and_refuses_a_float_scalar_whole():
    m2 = small_m2()
    row = torch.tensor([0.25, 0.5, 0.25], dtype=F64)
    got = m2.one_hot(row)
    assert got.dtype == torch.float32 and torch.equal(got, row.float())
    with pytest.raises(
        DataError,
        match=whole(
            "labels have shape (); pass integer class indices (batch,) or one-hot rows (batch, 3)"
        ),
    ):
        m2.one_hot(torch.tensor(1.0))


def test_encode_without_labels_uses_the_classifiers_choice_for_any_batch_shape():
    """q(z | x) with y = argmax q(y | x): the posterior of the encoder applied to
    [x, e_argmax] by hand, for a single point (6,) and for points stacked (2, 4, 6)."""
    m2 = small_m2(3)
    stacked = torch.stack([points(4, seed=5), points(4, seed=6)])
    for x in (stacked, stacked[1, 2]):
        with torch.no_grad():
            labels = m2.classify(x).argmax(-1)
            e = torch.eye(3)[labels]
            want = m2.posterior(m2.encoder(torch.cat([x, e], -1)))
            got = m2.encode(x)
        assert got.batch_shape == x.shape[:-1]
        assert torch.equal(got.mean, want.mean) and torch.equal(got.stddev, want.stddev)
    assert len(set(m2.classify(stacked).argmax(-1).flatten().tolist())) > 1


SOFT = 1 + 2**-8 + 2**-12  # 1 + 2^-7 in bfloat16; 1 + 2^-8 in float16, then 1 in bfloat16


def test_soft_label_rows_reach_the_guide_and_the_decoder_cast_once_to_the_inputs_dtype():
    """A float16 M2 under bfloat16 autocast, float32 x and z: the label rows join x in the
    guide and z in the decoder as float32 (then bfloat16 in the layers), never through the
    parameters' float16 first. The reference applies the nets to [x, y] and [z, y] by hand."""
    half = small_m2(5).half()
    x = points(3, seed=7)
    y = torch.tensor([[SOFT, 0.0, 0.0], [0.0, SOFT, 0.0], [0.0, 0.0, SOFT]])
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(8))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        guide_trace = poutine.trace(half.guide).get_trace(x, y)
        got_q = guide_trace.nodes["z"]["fn"].mean
        want_q = half.posterior(half.encoder(torch.cat([x, y], -1))).mean
        got_p = half.decode(z, y).base_dist.logits
        want_p = half.decoder(torch.cat([z, y], -1))
    assert torch.equal(got_q, want_q)
    assert torch.equal(got_p, want_p)


class DoubleLogits(nn.Module):
    """A classifier computing its logits in float64 from float32 points."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).double()


def test_a_label_drawn_from_float64_logits_reaches_the_encoder_in_x_s_dtype():
    """With a classifier whose logits are float64, the drawn one-hot label joins float32 x
    as float32: q(z | x, y) is the float32 encoder's posterior at [x, y] for the y drawn, and
    so for each label the enumerating guide tries."""
    m2 = small_m2(6)
    m2.classifier = DoubleLogits(m2.classifier)
    x = points(4, seed=9)
    with torch.no_grad():
        for guide, y_shape in ((m2.guide, (4, 3)), (m2.guide_enumerated, (3, 1, 3))):
            guide_trace = poutine.trace(poutine.enum(guide, first_available_dim=-2)).get_trace(x)
            y = guide_trace.nodes["y"]["value"]
            assert y.dtype == F64 and y.shape == y_shape
            qz = guide_trace.nodes["z"]["fn"]
            lead = torch.broadcast_shapes(x.shape[:-1], y.shape[:-1])
            xy = torch.cat([x.expand(*lead, 6), y.float().expand(*lead, 3)], -1)
            want = m2.posterior(m2.encoder(xy))
            assert qz.mean.dtype == torch.float32 and torch.equal(qz.mean, want.mean)


def frames(program, *args) -> dict[str, list]:
    sites = prune_subsample_sites(poutine.trace(program).get_trace(*args)).nodes.values()
    return {
        s["name"]: [(f.name, f.dim, f.size, f.full_size) for f in s["cond_indep_stack"]]
        for s in sites
        if s["type"] == "sample"
    }


def test_model_and_guides_share_one_data_plate_of_the_batch_size_at_dim_minus_1():
    """Every site of the model and of either guide is in the plate "data" of size 4 (the
    batch) at dim -1, labelled or not; so an outer plate a caller puts at dim -1 collides
    with it in the guides as in the model."""
    m2, x, y = small_m2(), points(4), torch.tensor([0, 2, 1, 2])
    data = [("data", -1, 4, 4)]
    assert frames(m2.model, x) == {"y": data, "z": data, "x": data}
    assert frames(m2.model, x, y) == {"y": data, "z": data, "x": data}
    for guide in (m2.guide, m2.guide_enumerated):
        assert frames(guide, x) == {"y": data, "z": data}
        assert frames(guide, x, y) == {"z": data}
    for program in (m2.model, m2.guide, m2.guide_enumerated):
        with pytest.raises(ValueError, match='^at plates "data" and "outer", collide at dim=-1'):
            with pyro.plate("outer", 4, dim=-1):
                program(x)


def test_labels_for_sampling_are_drawn_on_the_parameters_device_whatever_the_default():
    """With another default device in effect (meta: shapes without values) a CPU M2 draws
    its labels on the CPU, so sampling gives the draws it gives without it."""
    m2 = small_m2(7)
    pyro.set_rng_seed(9)
    expected = m2.sample(5)
    pyro.set_rng_seed(9)
    with torch.device("meta"):
        got = m2.sample(5)
    assert got.device.type == "cpu" and torch.equal(got, expected)


def test_an_m2_model_scores_as_many_values_as_one_data_point_holds():
    from pyro_vae.models import ModelConfig

    m2 = build_semisupervised(ModelConfig(event_shape=(2, 3), latent_dim=2, hidden=(4,)), 3)
    assert m2.num_data_elements() == 6
