#!/usr/bin/env bash
# One prepared GPU run (the `device` tool's machine: jax preinstalled, no TFDS, no network):
# the 3-seed CIFAR-10 original-protocol reproduction, timed end to end, and its table.
#   bash scripts/gpu_reproduction.sh DATASETS_DIR      (DATASETS_DIR holds cifar10-jpeg.tar.gz)
# Writes under $OUT (default runs/gpu): the sweep folder, original_cifar10.json, time.txt.
set -euo pipefail
DATA=${1:?give the folder holding cifar10-jpeg.tar.gz}
OUT=${OUT:-runs/gpu}
export PYTHONPATH=$PWD
CIFAR="folder:$DATA/cifar10-jpeg.tar.gz"
python -c "import jax; print(jax.devices())"
start=$(date +%s.%N)
python -m drift_jax.cli sweep experiments/original_cifar10.json --quiet \
  --set "base=\"$CIFAR?split=train\"" --set "holdout=\"$CIFAR?split=test\"" \
  --out "$OUT/original_cifar10"
end=$(date +%s.%N)
echo "3-seed original protocol, wall seconds: $(echo "$end - $start" | bc)" | tee "$OUT/time.txt"
python experiments/reproduction_table.py "$OUT/original_cifar10" --out "$OUT/original_cifar10.json"
