#!/usr/bin/env bash
# Pack, here, what bench/gpu.sh needs on a lent GPU machine, into .device/ (ignored by git; name it in the
# device call's `carry`). That machine is bare and offline: its image has Python 3.12 with numpy, tokenizers,
# jinja2, onnx, onnxruntime (a CPU build), prometheus-client, httpx and uvloop, but not the web server, gRPC's
# health and reflection services, pydantic or the load generators, and what travels is 64 MiB at most.
#
#   bash scripts/pack-device.sh            # then: run(command="bash bench/gpu.sh", carry=[".device"])
#
# .device/wheels  the server's packages at the versions this checkout is tested with (pip freeze of $PYTHON),
#                 built for the device's Python (DEVICE_PYTHON_VERSION, default 3.12)
# .device/bin     wrk and h2load from this machine (scripts/install-system-deps.sh), and in .device/lib the
#                 libraries they load that a Python image may lack (glibc and the C++ runtime stay behind)
# .device/null-bundle  the null-engine bundle of bench/overhead.py, built from artifacts/default-bundle
#                 (the real bundle's model, ~90 MB, does not fit; neither does onnxruntime-gpu, ~250 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PYV=${DEVICE_PYTHON_VERSION:-3.12}
OUT_DIR=.device
LIMIT=$((64 * 1024 * 1024))

# The server's packages that the image lacks (or holds too old for the committed gRPC stubs), with everything
# they require, at the versions installed here.
ROOTS="fastapi uvicorn httptools pydantic-settings grpcio-health-checking grpcio-reflection protobuf jsonschema"

rm -rf "$OUT_DIR"
mkdir -p "$OUT_DIR/wheels" "$OUT_DIR/bin" "$OUT_DIR/lib"

echo "== wheels for Python $PYV"
mapfile -t pins < <("$PY" -c '
import re, sys
from importlib.metadata import PackageNotFoundError, distribution
seen, todo = {}, sys.argv[1:]
while todo:
    wanted = todo.pop()
    try:
        dist = distribution(wanted)
    except PackageNotFoundError:  # required only under a marker this Python does not meet
        print(f"not installed here, not packed: {wanted}", file=sys.stderr)
        continue
    name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
    if name not in seen:
        seen[name] = dist.version
        # what every install of it needs, not its optional extras
        todo += [re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in dist.requires or [] if "extra ==" not in r]
print("\n".join(f"{n}=={v}" for n, v in sorted(seen.items())))' $ROOTS)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$OUT_DIR/wheels" "${pins[@]}"
ls "$OUT_DIR/wheels"

echo "== load generators"
for tool in wrk h2load; do
  path=$(command -v "$tool") || { echo "no $tool here: run scripts/install-system-deps.sh first" >&2; exit 1; }
  cp "$path" "$OUT_DIR/bin/"
  # Every library it loads except glibc's own and the C/C++ runtimes, which any image with Python has.
  ldd "$path" | awk '/=> \//{print $3}' | grep -vE '/(libc|libm|libpthread|libdl|librt|libgcc_s|libstdc\+\+)\.so' |
    while read -r lib; do cp -L "$lib" "$OUT_DIR/lib/"; done
done
ls "$OUT_DIR/bin" "$OUT_DIR/lib"

echo "== null-engine bundle"
"$PY" -c "
import sys; from pathlib import Path; sys.path.insert(0, '.')
from bench.overhead import build_null_bundle
build_null_bundle(Path('artifacts/default-bundle'), Path('$OUT_DIR/null-bundle'))"

tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
packed=$(du -sb "$OUT_DIR" | cut -f1)
echo "== $((packed / 1024)) KiB packed + $((tracked / 1024)) KiB of tracked files; a device call carries $((LIMIT / 1024)) KiB"
if [ $((packed + tracked)) -gt "$LIMIT" ]; then
  echo "too large to travel" >&2
  exit 1
fi
