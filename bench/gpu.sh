#!/usr/bin/env bash
# GPU run of the scoring benchmarks, for a machine with an NVIDIA GPU (written for an H200; it has
# not been run on a GPU yet).
#
#   bench/gpu.sh                 # from the repository root; results in bench/results/gpu/
#
# 1. A venv (.venv-gpu) with the CUDA build of torch 2.13.0 and onnxruntime-gpu, installed from
#    the index pip is configured with (PIP_INDEX_URL / PIP_EXTRA_INDEX_URL; the CUDA wheels come
#    from https://download.pytorch.org/whl/cu128 when it is reachable). An existing CUDA torch in
#    .venv-gpu is kept.
# 2. CUDA-path tests (tests that skip without CUDA), then the scorer benchmark on cuda
#    (bench.scoring --device cuda, the full grid) and on the CPU of the same machine (--quick),
#    for comparison. The machine needs the CUDA wheels from the index (or already installed).
# 3. Detector on cuda against cpu on the default model: ONNX Runtime provider in use, largest
#    differences of scores and p-values, and time per batch; float32 and bfloat16 products.
# 4. The service benchmark with the reference on the GPU (SNNL_DEVICE=cuda), if `wrk` is there.
#
# Everything lands in bench/results/gpu/ with the commit and nvidia-smi's description.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/gpu
mkdir -p "$out"
py=.venv-gpu/bin/python
python="${PYTHON:-python3}"

if [ ! -x "$py" ]; then
  "$python" -m venv .venv-gpu
fi
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  "$py" -m pip install --quiet --upgrade pip
  "$py" -m pip install --quiet torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cu128
fi
# torch is already the CUDA build: constraints.txt's CPU pin is satisfied by it
"$py" -m pip install --quiet -c constraints.txt -e '.[dev,bench]'

{
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$py" -c "import torch, onnxruntime as ort; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); print('onnxruntime', ort.__version__, ort.get_available_providers())"
} | tee "$out/machine.txt"

"$py" -m pytest -q tests/snnl/scoring/test_cuda.py 2>&1 | tee "$out/tests.txt"

threads=$(nproc)
"$py" -m bench.scoring --device cuda --threads "$threads" --out "$out" | tee "$out/scoring-cuda.log"
# the CPU side of the comparison on the small grid: the full one takes minutes of the GPU lease
"$py" -m bench.scoring --device cpu --quick --threads "$threads" --out "$out" | tee "$out/scoring-cpu.log"

"$py" - <<'EOF' | tee "$out/detector.md"
"""Detector on cuda against cpu: the default model, all digits, float32 and bfloat16 products."""
import time

import numpy as np
import torch
from sklearn.datasets import load_digits

from snnl.model.detector import Detector

x = np.resize(load_digits().data.astype(np.float32), (4096, 64))
cpu = Detector.load("models", "digits-mlp", device="cpu")
base = cpu.score(x)
print("| device | compute dtype | ONNX Runtime provider | max abs diff a(x) | max abs diff p | ms per 256 |")
print("|---|---|---|---:|---:|---:|")
for device in ("cpu", "cuda"):
    for dtype in ("float32", "bfloat16"):
        det = Detector.load("models", "digits-mlp", device=device, compute_dtype=dtype)
        got = det.score(x)
        for _ in range(3):
            det.score(x[:256])
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            det.score(x[:256])
        ms = (time.perf_counter() - start) / 20 * 1e3
        da = np.abs(got.nonconformity - base.nonconformity).max()
        dp = np.abs(got.p_value - base.p_value).max()
        print(f"| {device} | {dtype} | {det.provider} | {da:.2e} | {dp:.2e} | {ms:.2f} |")
EOF

if command -v wrk >/dev/null; then
  SNNL_DEVICE=cuda "$py" -m bench.load --configs batching --duration 5 --out "$out/load-cuda.md"
else
  echo "wrk missing (apt-get install wrk): service benchmark skipped" | tee "$out/load-cuda.md"
fi
echo "results in $out"
