#!/usr/bin/env bash
# The papers' budgets of benchmarks/mnist_table.py, every row and both sides (library, twin)
# at once on one GPU host (16 processes; one CPU thread each for the Python side of a step).
# Resumable: each process continues from its row's last checkpoint, so the script can be run
# again, in as many sittings as the machine is lent for, until every row reaches its budget.
#   bash benchmarks/mnist_table_gpu.sh /path/to/mnist.npz [cuda]
# then: python benchmarks/mnist_table.py --mnist /path/to/mnist.npz --report
set -uo pipefail
cd "$(dirname "$0")/.."
MNIST=$1
DEVICE=${2:-cuda}
export OMP_NUM_THREADS=1 PYTHONPATH=.
mkdir -p benchmarks/mnist_table_runs/logs
budget() {  # row -> the paper's epochs (Burda: 3^0 + ... + 3^7; Tomczak: the 2,000-epoch cap)
  case $1 in
    vae_gated|vamp) echo 2000 ;;
    m2) echo 1000 ;;
    *) echo 3280 ;;
  esac
}
for row in vae_1l iwae5_1l iwae50_1l vae_2l iwae50_2l vae_gated vamp m2; do
  for side in lib twin; do
    "${PYTHON:-python}" benchmarks/mnist_table.py --mnist "$MNIST" --rows "$row" \
      --side "$side" --device "$DEVICE" --budget "$(budget "$row")" --every 50 \
      --curve-points 1000 --curve-k 1000 --test-points 10000 --k 5000 \
      > "benchmarks/mnist_table_runs/logs/$row-$side.log" 2>&1 &
  done
done
wait
"${PYTHON:-python}" benchmarks/mnist_table.py --mnist "$MNIST" --report
