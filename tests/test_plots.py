"""Every plotting function writes a non-empty image of the expected pixel size; run figures
and the ``sample``/``plot`` commands produce their files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_vae.analysis import plots
from pyro_vae.cli import main


def size_px(path):
    with Image.open(path) as im:
        return im.size


def expected(w_in: float, h_in: float) -> tuple[int, int]:
    return round(w_in * plots.DPI), round(h_in * plots.DPI)


@pytest.fixture
def images():
    return torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_elbo_and_loss_curves(tmp_path):
    history = [
        {
            "epoch": e,
            "train_elbo": -30 + e,
            "valid_elbo": -31 + e,
            "valid_elbo_stderr": 0.5,
            "train_nll": 30 - e,
            "valid_nll": 31 - e,
            "valid_nll_stderr": 0.5,
        }
        for e in range(1, 6)
    ]
    for path in (
        plots.plot_elbo(history, tmp_path / "e.png"),
        plots.plot_reconstruction_nll(history, tmp_path / "l.png"),
    ):
        assert path.stat().st_size > 0 and size_px(path) == expected(6, 4)


def test_image_grid_and_reconstructions(tmp_path, images):
    p = plots.plot_image_grid(images, tmp_path / "g.png", "grid", ncol=4)
    assert size_px(p) == expected(0.6 * 4 + 0.5, 0.6 * 3 * 9 / 8 - 0.6 / 8 + 0.7)
    p = plots.plot_reconstructions(images, images, tmp_path / "r.png", ncol=4)
    assert size_px(p) == expected(2 * (0.6 * 4 + 0.5), 0.6 * 3 + 0.8)
    assert plots.plot_image_grid(torch.rand(3, 7), tmp_path / "no.png", "x") is None


@pytest.mark.parametrize("n_labels", [0, 3, 20])
def test_latent_scatter(tmp_path, n_labels):
    points = np.random.default_rng(0).normal(size=(60, 2))
    labels = torch.arange(60) % n_labels if n_labels else None
    p = plots.plot_latent_scatter(points, labels, tmp_path / "s.png")
    assert p.stat().st_size > 0 and size_px(p) == expected(6.5, 5)


def test_manifold_interpolation_attribute(tmp_path):
    z = torch.linspace(-1, 1, 5)
    p = plots.plot_manifold(torch.rand(25, 1, 8, 8), z, z, tmp_path / "m.png")
    cell = plots.cell_inches(8)
    assert size_px(p) == expected(cell * 5 + 1.0, cell * 5 + 1.0)
    strips = {"linear": torch.rand(7, 1, 20, 20), "spherical": torch.rand(7, 1, 20, 20)}
    p = plots.plot_interpolations(strips, tmp_path / "i.png")
    cell = plots.cell_inches(20)
    assert size_px(p) == expected(cell * 7 + 1.4, cell * 2 + 1.0)
    moved = torch.rand(5, 3, 3, 20, 20)  # RGB
    p = plots.plot_attribute(moved, [-2, -1, 0, 1, 2], tmp_path / "a.png", inputs=moved[0])
    assert size_px(p) == expected(max(cell * 6 + 1.2, 4.5), cell * 3 + 1.3)


def test_model_comparison_and_pdf(tmp_path):
    u = torch.linspace(-1, 1, 4)
    panel = {
        "points": np.random.default_rng(0).normal(size=(30, 2)),
        "labels": torch.arange(30) % 3,
        "axis_labels": ("z1", "z2"),
        "images": torch.rand(16, 1, 8, 8),
        "u": u,
        "v": u,
    }
    panels = [{**panel, "name": "autoencoder"}, {**panel, "name": "VAE"}]
    p = plots.plot_model_comparison(panels, tmp_path / "c.png")
    assert size_px(p) == expected(11, 10)
    pdf = plots.plot_model_comparison(panels, tmp_path / "c.pdf")
    assert pdf.read_bytes()[:4] == b"%PDF"


def test_train_writes_standard_figures_and_plot_commands_work(tmp_path, capsys):
    common = [
        "--epochs",
        "2",
        "--latent-dim",
        "2",
        "--hidden",
        "16",
        "--no-progress",
        "--output-dir",
        str(tmp_path),
    ]
    assert main(["train", "--name", "vae", "--num-samples", "5", *common]) == 0
    assert main(["train", "--name", "ae", "--model", "ae", "--format", "pdf", *common]) == 0
    vae_dir, ae_dir = tmp_path / "vae", tmp_path / "ae"
    for name in ("elbo", "samples", "reconstructions", "latent", "interpolation", "manifold"):
        assert (vae_dir / f"{name}.png").stat().st_size > 0, name
    for name in ("loss", "samples", "reconstructions", "latent", "interpolation"):
        assert (ae_dir / f"{name}.pdf").stat().st_size > 0, name
    assert json.loads((ae_dir / "config.json").read_text())["kind"] == "ae"
    assert main(["sample", str(vae_dir), "-n", "9", "--source", "aggregate"]) == 0
    assert (vae_dir / "samples-aggregate.png").exists()
    kinds = {
        "elbo": [],
        "samples": [],
        "reconstructions": [],
        "latent": [],
        "manifold": [],
        "interpolation": ["--pair", "0", "3"],
        "attribute": ["--positive", "1", "--negative", "7"],
        "compare": ["--against", str(ae_dir)],
    }
    for kind, extra in kinds.items():
        out = tmp_path / f"{kind}.png"
        assert main(["plot", str(vae_dir), "--kind", kind, "--output", str(out), *extra]) == 0
        assert out.stat().st_size > 0, kind
    # clear refusals, exit status 2
    assert main(["sample", str(ae_dir)]) == 2
    assert main(["plot", str(ae_dir), "--kind", "manifold"]) == 2
    assert main(["plot", str(vae_dir), "--kind", "attribute"]) == 2
    assert main(["evaluate", str(ae_dir), "--method", "ais"]) == 2
    err = capsys.readouterr().err
    assert "no prior" in err and "autoencoder run" in err
    # an autoencoder's evaluate reports its own metric: the reconstruction NLL
    assert main(["evaluate", str(ae_dir)]) == 0
    assert "test reconstruction NLL" in capsys.readouterr().out


BACKEND_PROBE = """
import sys

import matplotlib
import torch

matplotlib.use("{backend}")
from pyro_vae.analysis import plots  # noqa: E402
import pyro_vae.cli  # noqa: E402,F401  (the whole package, as a notebook would import it)

assert matplotlib.get_backend() == "{backend}", matplotlib.get_backend()
codes = torch.randn(30, 2)
plots.plot_latent_scatter(codes.numpy(), torch.arange(30) % 3, sys.argv[1] + "/s.png")
plots.plot_latent_scatter(codes.numpy(), torch.arange(30), sys.argv[1] + "/c.png")
plots.plot_image_grid(torch.rand(4, 1, 8, 8), sys.argv[1] + "/g.png", "grid")
assert matplotlib.get_backend() == "{backend}", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
print("ok")
"""


@pytest.mark.parametrize("backend", ["pdf", "svg"])
def test_importing_and_plotting_keeps_the_users_backend(tmp_path, backend):
    """A notebook's backend stays selected: nothing calls ``matplotlib.use`` or pyplot."""
    import subprocess
    import sys

    probe = BACKEND_PROBE.format(backend=backend)
    out = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert all((tmp_path / f).stat().st_size > 0 for f in ("s.png", "c.png", "g.png"))


def test_plots_do_not_grow_pyplot_state(tmp_path, images):
    """Figures are plain objects: plotting registers nothing with pyplot's figure manager."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.plot_image_grid(images, tmp_path / "g.png", "grid")
    assert plt.get_fignums() == before
