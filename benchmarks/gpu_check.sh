#!/usr/bin/env bash
# The GPU checks in one run (under 5 minutes on one GPU): the CUDA tests, then the GPU speed
# study (benchmarks/gpu_speed.py). Needs deepprior importable (pip install -e ".[test]", or
# PYTHONPATH=. with torch, numpy, scipy, scikit-image, pillow, typer, tqdm and pytest present).
# Results go to $OUT when set (a device run), else to benchmarks/results. The study's code is
# checked on the CPU by the test suite (gpu_speed.py --smoke --device cpu) before a GPU runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name(0))"
python -m pytest -q -p no:cacheprovider tests/test_gpu.py \
  "tests/test_fit.py::test_fit_on_cuda_matches_shapes" 2>&1 | tee "$out/gpu_tests.txt"
python benchmarks/gpu_speed.py --out-dir "$out" ${GPU_QUICK:+--quick} 2>&1 | tee "$out/gpu_speed.txt"
