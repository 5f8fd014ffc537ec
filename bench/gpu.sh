#!/usr/bin/env bash
# One prepared run for a machine with an NVIDIA GPU (under 10 minutes): the CUDA tests, the serving-layer
# overhead (bench/overhead.py: a null-engine bundle on CUDA against the bare endpoints, all cores, then two),
# then the serving benchmark on the CUDA provider with the fp32 and fp16 bundles, concurrency up to 256.
# Needs: the default bundle and checkpoint under artifacts/ (build them here with `make bundle`) and a
# Python environment with rmserve[train,dev] (`make install`); where the GPU machine has no package
# index, carry wheels in .whl/ and they are installed from there.
#   bash bench/gpu.sh            # figures are appended to docs/benchmarks.md with the GPU named
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ]; then
  python3 -m venv .venv
  if [ -d .whl ]; then .venv/bin/pip install --no-index --find-links .whl torch==2.13.0 -e '.[train,dev]'
  else .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e '.[train,dev]'; fi
  PY=.venv/bin/python
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"

echo "== CUDA tests"
RMSERVE_TEST_CUDA=1 timeout 120 "$PY" -m pytest -q -m cuda tests

echo "== serving-layer overhead, null engine on CUDA (wrk and h2load: scripts/install-system-deps.sh)"
bash scripts/install-system-deps.sh || echo "could not install the load generators"
protocols=""
if command -v wrk >/dev/null; then protocols="http"; else echo "no wrk here: no HTTP figures"; fi
if command -v h2load >/dev/null; then protocols="$protocols grpc"; else echo "no h2load here: no gRPC figures"; fi
if [ -n "$protocols" ]; then
  timeout 200 "$PY" bench/overhead.py --rounds 1 --seconds 5 --protocols $protocols --server-args "--device cuda"
  timeout 120 "$PY" bench/overhead.py --rounds 1 --seconds 5 --protocols $protocols --server-args "--device cuda" \
    --server-cpus 0-1 --skip-extras
fi

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
