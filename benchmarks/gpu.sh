#!/usr/bin/env bash
# npgrad on an NVIDIA GPU: the op table on CuPy against PyTorch CUDA, the cnn preset on the
# GPU beside PyTorch and beside npgrad on the CPU; writes results-gpu.md (into $OUT under the
# device tool, else benchmarks/). Usage: bash benchmarks/gpu.sh [MNIST-10K DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data/mnist-10k}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# The extra: CuPy for the machine's CUDA. Without a package index (the device tool's
# machines, which have CuPy already) pip only confirms it is there.
major=$(python3 -c "import torch; print((torch.version.cuda or '12').split('.')[0])" 2>/dev/null || echo 12)
if python3 -m pip install -q --no-build-isolation --no-deps -e . 2>/dev/null; then
  python3 -m pip install -q ".[cuda$major]" 2>/dev/null ||
    python3 -c "import cupy" || { echo "no CuPy: pip install 'npgrad[cuda$major]'"; exit 2; }
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # no build backend there: run from src
fi
python3 -c "import cupy, npgrad; print('CuPy', cupy.__version__, 'npgrad', npgrad.__version__)" || exit 2
python3 benchmarks/bench_gpu.py --dataset "$data" --out "${OUT:-benchmarks}/results-gpu.md"
