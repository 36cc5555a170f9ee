#!/usr/bin/env bash
# npgrad on an NVIDIA GPU: the op table on CuPy against PyTorch CUDA, the cnn preset on the
# GPU beside PyTorch and beside npgrad on the CPU; writes results-gpu.md (into $OUT under the
# device tool, else benchmarks/), section by section. Usage: bash benchmarks/gpu.sh [DATA DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
data="${1:-}"
if [ -z "$data" ]; then  # the device tool's carried copy, else the shared folder beside us
  data=.gpu-data/mnist-10k
  [ -d "$data" ] || data=../shared/data/mnist-10k
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # npgrad from this tree: no build needed
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# The extra, CuPy for the machine's CUDA, unless it is there already (the device tool's
# machines have it, and no package index to install from).
if ! python3 -c "import cupy" 2>/dev/null; then
  major=$(python3 -c "import torch; print((torch.version.cuda or '12').split('.')[0])" 2>/dev/null || echo 12)
  python3 -m pip install -q "cupy-cuda${major}x" ||
    { echo "no CuPy and none installable: pip install 'npgrad[cuda$major]'"; exit 2; }
fi
python3 -c "import cupy, npgrad; print('CuPy', cupy.__version__, 'npgrad', npgrad.__version__)" || exit 2
python3 benchmarks/bench_gpu.py --dataset "$data" --out "${OUT:-benchmarks}/results-gpu.md"
