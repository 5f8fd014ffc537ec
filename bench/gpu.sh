#!/usr/bin/env bash
# One prepared run for a lent GPU machine (under 10 minutes), whatever that machine holds:
#   1. the serving-layer overhead (bench/overhead.py: the null-engine bundle against the bare endpoints) on
#      every core, then on two and on one: how the Python layer scales with the cores a GPU host has;
#   2. where onnxruntime has its CUDA provider and the real bundles are here: the CUDA tests, the serving
#      benchmark on CUDA with the fp32 and fp16 bundles (concurrency up to 256) and an fp16 import.
# On the lent machine (offline, Python 3.12 image, 64 MiB carried per call) pack first, here:
#   bash scripts/pack-device.sh                      # wheels, wrk and h2load, the null-engine bundle
#   run(command="bash bench/gpu.sh", carry=[".device"], timeout_s=600)
# The log and docs/benchmarks.md (the figures, appended with the machine named) come back in $OUT.
# With a development environment (`make install`, `make bundle`) it runs as it is: bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RESULTS=${OUT:-/tmp/rmserve-gpu}
mkdir -p "$RESULTS"
exec > >(tee "$RESULTS/gpu.log") 2>&1
trap 'cp docs/benchmarks.md "$RESULTS/" 2>/dev/null || true' EXIT

PY=${PYTHON:-}
if [ -z "$PY" ] && [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
elif [ -z "$PY" ] && [ -d .device/wheels ]; then
  # The lent machine: its image's python3 with what scripts/pack-device.sh carried (the machine is thrown away after).
  python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade .device/wheels/*.whl
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
  PY=python3
elif [ -z "$PY" ]; then
  echo "no Python environment: run make install, or carry .device (bash scripts/pack-device.sh)" >&2
  exit 1
fi
if [ -d .device/bin ]; then
  export PATH="$PWD/.device/bin:$PATH" LD_LIBRARY_PATH="$PWD/.device/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi: none"
"$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
cuda=$("$PY" -c "import onnxruntime as o; print(int('CUDAExecutionProvider' in o.get_available_providers()))")
device_args=""
[ "$cuda" = 1 ] && device_args="--device cuda"
bundle=artifacts/default-bundle
extras=""
if [ ! -f "$bundle/manifest.json" ]; then
  bundle=.device/null-bundle  # the model behind the 100 KB-prompt run is not here
  extras="--skip-extras"
fi
host="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true) host, onnxruntime CUDA provider: $cuda"

echo "== serving-layer overhead, null engine, every core (wrk and h2load: carried, or scripts/install-system-deps.sh)"
command -v wrk >/dev/null && command -v h2load >/dev/null || bash scripts/install-system-deps.sh ||
  echo "could not install the load generators"
protocols=""
if command -v wrk >/dev/null; then protocols="http"; else echo "no wrk here: no HTTP figures"; fi
if command -v h2load >/dev/null; then protocols="$protocols grpc"; else echo "no h2load here: no gRPC figures"; fi
if [ -n "$protocols" ]; then
  # rmserve serves the null engine with its CUDA batching either way: the batching of the GPU it stands in for.
  policy="$("$PY" -c 'import sys; sys.path.insert(0, "."); from bench.overhead import gpu_policy; print(gpu_policy())')"
  timeout 240 "$PY" bench/overhead.py --bundle "$bundle" --rounds 1 --seconds 5 --protocols $protocols $extras \
    --server-args "$policy $device_args" --note "$host; every core"
  for cpus in 0-1 0; do
    timeout 120 "$PY" bench/overhead.py --bundle "$bundle" --rounds 1 --seconds 4 --sizes 1 16 --protocols $protocols \
      --skip-extras --server-cpus "$cpus" --server-args "$policy $device_args" --note "$host; CPUs $cpus"
  done
fi

if [ "$cuda" != 1 ] || [ ! -f artifacts/default-bundle/manifest.json ] || [ ! -d artifacts/default-checkpoint ]; then
  echo "== no CUDA figures: they need onnxruntime-gpu (~250 MB, more than a device call carries) and the default"
  echo "   bundle and checkpoint (make bundle)"
  exit 0
fi

echo "== CUDA tests"
RMSERVE_TEST_CUDA=1 timeout 120 "$PY" -m pytest -q -m cuda tests

echo "== fp16 variant"
[ -d artifacts/default-bundle-fp16 ] || timeout 120 "$PY" -m rmserve.cli quantize --bundle artifacts/default-bundle \
  --output artifacts/default-bundle-fp16 --precision fp16 --device cuda

echo "== serving benchmark, CUDA, fp32 then fp16"
timeout 200 "$PY" bench/serve.py --device cuda --seconds 8 --concurrency 1 32 128 256 \
  --server-args "--max-batch-size 128 --max-batch-tokens 32768"
timeout 150 "$PY" bench/serve.py --device cuda --seconds 8 --concurrency 32 256 --skip-naive \
  --bundle artifacts/default-bundle-fp16 --server-args "--max-batch-size 128 --max-batch-tokens 32768"

# The CUDA tests above include tests/integration/test_fp16_cuda.py (an imported decoder's fp16 bundle,
# checked and served on CUDA). Here the same path on a real trained model: the default checkpoint is a
# Hugging Face BERT directory, imported as fp16 with its agreement checked in half precision on CUDA.
echo "== rmserve import --precision fp16 --device cuda (default checkpoint, 400 dev pairs)"
timeout 300 "$PY" -m rmserve.cli import artifacts/default-checkpoint --output /tmp/rmserve-import-fp16 \
  --precision fp16 --device cuda --max-length 256 --preferences training/data/hh-harmless/dev.jsonl.gz --limit-dev 400
