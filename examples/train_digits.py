"""Train a VAE on the embedded digits from Python, score it, and save a sample grid.

Run: python examples/train_digits.py [--epochs 100] [--num-samples 1000]
"""

import argparse
from pathlib import Path

import pyro_vae
from pyro_vae.analysis import plot_image_grid
from pyro_vae.data import eval_data, load_digits
from pyro_vae.infer import log_likelihood
from pyro_vae.train import TrainConfig, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--num-samples", type=int, default=1000, help="importance samples K")
    args = parser.parse_args()
    data = load_digits()
    vae = pyro_vae.build_vae(pyro_vae.ModelConfig(event_shape=data.event_shape, latent_dim=2))
    fit(vae, data, TrainConfig(epochs=args.epochs, seed=0))
    x = eval_data(vae, data.test)
    result = log_likelihood(vae.model, vae.guide, x, num_samples=args.num_samples)
    print(result)
    out = plot_image_grid(vae.sample(64), Path("digits-samples.png"), "samples, E[x | z]")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
