"""Why does an IAF posterior not tighten the bound? Inference gaps, train vs test, by model.

Trains VAEs that differ only in the posterior (diagonal normal or IAF with given steps, MADE
hidden sizes and context size) exactly like ``parts_fashion_mnist.py`` and reports, on test
images and on a subset of the TRAINING images: the ELBO, the importance-sampled log p(x) and
their difference (the total inference gap, log p(x) - ELBO = KL(q(z|x) || p(z|x))). With
``--local N`` it also splits the test gap of the first N test images into approximation and
amortization gaps (Cremer et al., 2018) with ``pyro_vae.infer.gaps.vae_inference_gaps``.
Per-image test log p(x) are saved to ``--out`` for paired comparisons between runs.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/iaf_gap_study.py --posterior diagonal \
        --epochs 30 --out /tmp/diag.pt
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/iaf_gap_study.py --posterior iaf \
        --iaf-steps 4 --iaf-hidden 320,320 --iaf-context 64 --epochs 30 --out /tmp/iaf.pt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from parts_fashion_mnist import ROOT, read_idx_images  # noqa: E402

from pyro_vae.data import dynamic_binarize, static_binarize  # noqa: E402
from pyro_vae.infer import (
    ais_log_likelihood,  # noqa: E402
    log_likelihood,  # noqa: E402
    vae_inference_gaps,  # noqa: E402
)
from pyro_vae.models import ModelConfig, build_vae  # noqa: E402


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",") if t)


def near_identity(posterior) -> None:
    """Start every IAF step at z -> 0.993 z: zero last MADE layer, gate logit 2 + 3 = 5.

    The stable step is z' = s z + (1 - s) m with s = sigmoid(logit + 2); the last layer's
    outputs are (m, logit), each latent_dim long.
    """
    d = posterior.latent_dim
    with torch.no_grad():
        for step in posterior.steps:
            last = step.nn.layers[-1]
            last.weight.zero_()
            last.bias.zero_()
            last.bias[d:] = 3.0


def score(vae, x: torch.Tensor, num_samples: int) -> dict[str, float]:
    """ELBO, IS log p(x) and their gap (means over images, nats) on fixed-binarized x."""
    with torch.no_grad():
        ll = log_likelihood(vae.model, vae.guide, x, num_samples=num_samples, batch_size=50)
    gap = ll.per_example - ll.elbo_per_example
    return {
        "elbo": ll.elbo,
        "log_px": ll.mean,
        "gap": float(gap.mean()),
        "gap_se": float(gap.std() / gap.numel() ** 0.5),
        "per_example": ll.per_example,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posterior", default="diagonal", choices=["diagonal", "iaf"])
    parser.add_argument("--iaf-steps", type=int, default=2)
    parser.add_argument("--iaf-hidden", type=ints, default=(64,))
    parser.add_argument("--iaf-context", type=int, default=16)
    parser.add_argument(
        "--identity-init",
        action="store_true",
        help="start each IAF step near the identity (last MADE layer zero, gate sigmoid(5))",
    )
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--train-eval", type=int, default=1000, help="training images scored")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--local", type=int, default=0, help="test images for the gap split")
    parser.add_argument("--local-steps", type=int, default=300)
    parser.add_argument(
        "--local-on", choices=["test", "train"], default="test", help="images of the gap split"
    )
    parser.add_argument(
        "--ais-steps", type=int, default=0, help="also AIS (8 chains) for log p(x) in the split"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_x = read_idx_images(ROOT / "train-images-idx3-ubyte.gz")[: args.train]
    test_x = read_idx_images(ROOT / "t10k-images-idx3-ubyte.gz")[: args.test]
    pyro.set_rng_seed(args.seed)
    config = ModelConfig(
        event_shape=tuple(train_x.shape[1:]),
        latent_dim=args.latent_dim,
        hidden=(512, 256),
        posterior=args.posterior,
        posterior_options=(
            {"steps": args.iaf_steps, "hidden": args.iaf_hidden, "context_dim": args.iaf_context}
            if args.posterior == "iaf"
            else {}
        ),
    )
    vae = build_vae(config)
    loss_fn = pyro.infer.Trace_ELBO()(vae.model, vae.guide)
    loss_fn(train_x[:2])  # initialize lazy parameters
    if args.identity_init and args.posterior == "iaf":
        near_identity(vae.posterior)
    n_params = sum(p.numel() for p in vae.posterior.parameters())
    print(f"{config.posterior}: posterior-family parameters {n_params}", flush=True)
    # fixed binarizations of the scored images (training uses fresh ones every epoch)
    torch.manual_seed(1234)
    test_b = static_binarize(test_x)
    train_b = static_binarize(train_x[: args.train_eval])
    torch.manual_seed(args.seed)
    init = score(vae, test_b[:200], 100)
    print(f"at init: test ELBO {init['elbo']:.2f}, gap {init['gap']:.2f}", flush=True)
    optim = torch.optim.Adam(vae.parameters(), lr=args.lr)
    start = time.perf_counter()
    n = train_x.shape[0]
    for epoch in range(args.epochs):
        perm = torch.randperm(n)
        total = 0.0
        for i in range(0, n, args.batch_size):
            x = dynamic_binarize(train_x[perm[i : i + args.batch_size]])
            loss = loss_fn(x) / x.shape[0]
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += float(loss) * x.shape[0]
        print(f"  epoch {epoch + 1}: train -ELBO {total / n:.2f}", flush=True)
    train_s = time.perf_counter() - start
    test = score(vae, test_b, args.num_samples)
    train = score(vae, train_b, args.num_samples)
    label = (
        "diagonal"
        if args.posterior == "diagonal"
        else f"IAF {args.iaf_steps} steps, MADE {list(args.iaf_hidden)}, context {args.iaf_context}"
    )
    line = (
        f"| {label} | {n_params} | {train['elbo']:.2f} | {train['log_px']:.2f} | "
        f"{train['gap']:.2f} +- {train['gap_se']:.2f} | {test['elbo']:.2f} | "
        f"{test['log_px']:.2f} | {test['gap']:.2f} +- {test['gap_se']:.2f} | {train_s:.0f} |"
    )
    print(
        "| posterior | q params | train ELBO | train log p(x) | train gap | test ELBO | "
        "test log p(x) | test gap | train s |"
    )
    print(line, flush=True)
    result = {"args": vars(args), "test": test, "train": train, "line": line}
    if args.local:
        sub = (test_b if args.local_on == "test" else train_b)[: args.local]
        ais = None
        if args.ais_steps:
            ais = ais_log_likelihood(vae.model, vae.guide, sub, num_steps=args.ais_steps)
            ais = ais.per_example
            result["ais"] = float(ais.mean())
            print(f"AIS log p(x) on the split: {float(ais.mean()):.2f}", flush=True)
        gaps = vae_inference_gaps(
            vae,
            sub,
            num_samples=args.num_samples,
            elbo_samples=args.num_samples,
            num_steps=args.local_steps,
            ais_per_example=ais,
        )
        summary = gaps.summary()
        print(f"gap split on {args.local} {args.local_on} images: {summary}", flush=True)
        result["gaps"] = summary
    if args.out is not None:
        torch.save(result, args.out)


if __name__ == "__main__":
    main()
