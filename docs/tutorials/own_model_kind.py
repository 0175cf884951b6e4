"""A model kind of one's own: registered from a plugin module, then trained, resumed,
evaluated and plotted by the `pyro-vae` command exactly like the built-in kinds.

Run: python docs/tutorials/own_model_kind.py  (outputs go to $PYRO_VAE_TUTORIAL_OUT, default
./own-model-kind-output; PYRO_VAE_TUTORIAL_QUICK=1: a tiny run for the tests)
"""

import contextlib
import io
import os
import shutil
import sys
from pathlib import Path

from pyro_vae import cli

OUT = Path(os.environ.get("PYRO_VAE_TUTORIAL_OUT", "own-model-kind-output"))
QUICK = os.environ.get("PYRO_VAE_TUTORIAL_QUICK") == "1"
OUT.mkdir(parents=True, exist_ok=True)
# the plugin module, cluster_kind.py, sits beside this script; --plugin imports it by name
sys.path.insert(0, str(Path(__file__).resolve().parent))

EPOCHS = 2 if QUICK else 100
os.chdir(OUT)  # the commands below name paths relative to the output folder
RUN = Path("runs") / "clusters"
shutil.rmtree(RUN, ignore_errors=True)
log = []


def pyro_vae(*words: str) -> None:
    """Run one `pyro-vae` command and keep what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        status = cli.main(list(words))
    log.append(f"$ pyro-vae {' '.join(words)}\n{printed.getvalue().rstrip()}")
    assert status == 0, printed.getvalue()


common = ["--plugin", "cluster_kind"]
# 1. train half the epochs (as if the run had been stopped), 2. resume it to the end
pyro_vae(
    "train", *common, "--model", "cluster_vae", "--clusters", "10", "--latent-dim", "2",
    "--epochs", str(EPOCHS // 2), "--num-samples", "100", "--no-progress",
    "--output-dir", str(RUN.parent), "--name", RUN.name,
)  # fmt: skip
pyro_vae("train", *common, "--resume", str(RUN), "--epochs", str(EPOCHS), "--no-progress")
# 3. score it again with more importance samples, 4. draw one figure
pyro_vae("evaluate", *common, str(RUN), "--num-samples", "20" if QUICK else "1000")
pyro_vae("plot", *common, str(RUN), "--kind", "latent", "--output", "latent.png")
shutil.copy(RUN / "samples.png", "samples.png")
Path("log.md").write_text("```\n" + "\n\n".join(log) + "\n```\n")
print("\n\n".join(log))
