"""Write your own prior, all the way: register it, train it on a built-in data set from Python
and from the command line, then evaluate and plot the saved runs.

Run: python docs/tutorials/own_prior.py  (outputs go to $PYRO_VAE_TUTORIAL_OUT, default
./own-prior-output; PYRO_VAE_TUTORIAL_QUICK=1: a tiny run for the tests)
"""

import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # where student_t_prior.py lives, as PYTHONPATH does for the CLI

import student_t_prior  # noqa: E402  (importing it registers "student_t")

from pyro_vae import ModelConfig, build_vae  # noqa: E402
from pyro_vae.runs import load_run, train_run  # noqa: E402
from pyro_vae.train import TrainConfig  # noqa: E402

OUT = Path(os.environ.get("PYRO_VAE_TUTORIAL_OUT", "own-prior-output")).resolve()
QUICK = os.environ.get("PYRO_VAE_TUTORIAL_QUICK") == "1"
OUT.mkdir(parents=True, exist_ok=True)
EPOCHS = 1 if QUICK else 60
K = 20 if QUICK else 1000
log = []

# 1. The prior follows the model: its constants are buffers, so .to() moves them too.
config = ModelConfig(event_shape=(1, 8, 8), prior="student_t", prior_options={"df": 3.0})
vae = build_vae(config)
assert isinstance(vae.prior, student_t_prior.StudentTPrior)
device = "cuda" if torch.cuda.is_available() else "cpu"
log.append(f"prior buffers on {vae.to(device).prior.loc.device} after vae.to({device!r})")

# 2. From Python: train on the built-in digits into a run directory (config.json records the
#    prior by name, its options, and the module that registered it).
results = train_run(
    "digits", config, TrainConfig(epochs=EPOCHS, seed=0), OUT / "python-run",
    num_samples=K, progress=False, overwrite=True,
)  # fmt: skip
log.append(f"Python run: test log p(x) = {results['test_log_likelihood']:.2f} nats")
vae, run_config = load_run(OUT / "python-run")
log.append(f"load_run rebuilt a {type(vae.prior).__name__} with df = {vae.prior.df}")


# 3. From the command line: the same prior, named by its registered name.
def pyro_vae_cli(*args: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    cmd = [sys.executable, "-m", "pyro_vae", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return done.stdout


pyro_vae_cli(
    "train", "--plugin", "student_t_prior", "--dataset", "digits", "--prior", "student_t",
    "--prior-opt", "df=3", "--epochs", str(EPOCHS), "--num-samples", str(K),
    "--output-dir", str(OUT), "--name", "cli-run", "--overwrite", "--no-progress",
)  # fmt: skip

# 4. Evaluate and plot the saved run. Loading a run never imports the module it names:
#    --plugin says that this module is code you trust.
report = pyro_vae_cli(
    "evaluate", str(OUT / "cli-run"), "--plugin", "student_t_prior", "--num-samples", str(K)
)
log.append("pyro-vae evaluate:\n\n```\n" + report.strip() + "\n```")
for kind in ("samples", "manifold"):
    pyro_vae_cli("plot", str(OUT / "cli-run"), "--plugin", "student_t_prior", "--kind", kind,
                 "--output", str(OUT / f"{kind}.png"))  # fmt: skip

(OUT / "log.md").write_text("\n\n".join(log) + "\n")
print("\n\n".join(log))
