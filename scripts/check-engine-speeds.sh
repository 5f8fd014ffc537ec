#!/usr/bin/env bash
# Runs every test that holds work behind a busy engine (marker `holds_engine`) with the slow test bundle's
# work per batch 4x smaller and 4x larger than the suite's default: they must pass at both, because they
# wait on what the server reports (the engine gate, queue depth, metrics), never on how long a batch takes.
#   bash scripts/check-engine-speeds.sh          # uses .venv/bin/python, or $PYTHON
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for work in 0.25 4; do
  echo "== --engine-work $work"
  "$PY" -m pytest -q -m holds_engine --engine-work "$work" tests
done
