#!/usr/bin/env bash
# The CPU budgets of benchmarks/mnist_table.py (see RESULTS.md, "The published MNIST table"):
# one process per side (library, twin), one thread each, rows in turn. Resumable: run it
# again after a kill and every row continues from its last checkpoint.
#   bash benchmarks/mnist_table_cpu.sh /path/to/mnist.npz lib   # and, beside it, ... twin
set -euo pipefail
cd "$(dirname "$0")/.."
MNIST=$1
SIDE=$2
export OMP_NUM_THREADS=1 PYTHONPATH=.
run() { "${PYTHON:-python}" benchmarks/mnist_table.py --mnist "$MNIST" --side "$SIDE" --test-points 1000 "$@"; }
run --rows vae_1l --budget 300 --every 10
run --rows vamp vae_gated --budget 40 --every 5
run --rows iwae5_1l vae_2l m2 --budget 10 --every 2
run --rows iwae50_1l --budget 4 --every 1
run --rows iwae50_2l --budget 2 --every 1
