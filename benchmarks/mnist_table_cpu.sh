#!/usr/bin/env bash
# The CPU budgets of benchmarks/mnist_table.py (see RESULTS.md, "The published MNIST table"):
# two processes of one thread each, one per core. Resumable: run it again after a kill and
# every row continues from its last checkpoint.
#   bash benchmarks/mnist_table_cpu.sh /path/to/mnist.npz lib    # and, beside it, ... twin
set -euo pipefail
cd "$(dirname "$0")/.."
MNIST=$1
SIDE=$2
export OMP_NUM_THREADS=1 PYTHONPATH=.
run() { "${PYTHON:-python}" benchmarks/mnist_table.py --mnist "$MNIST" --test-points 1000 "$@"; }
run --side "$SIDE" --rows vae_1l --budget 300 --every 10
run --side "$SIDE" --rows vamp vae_gated --budget 30 --every 5
run --side "$SIDE" --rows iwae5_1l vae_2l m2 --budget 6 --every 2
if [ "$SIDE" = lib ]; then
  run --side lib --rows iwae50_1l --budget 3 --every 1
else  # the twin's rows are quicker: this process also takes the library's last row
  run --side twin --rows iwae50_1l --budget 3 --every 1
  run --side twin --rows iwae50_2l --budget 2 --every 1
  run --side lib --rows iwae50_2l --budget 2 --every 1
fi
