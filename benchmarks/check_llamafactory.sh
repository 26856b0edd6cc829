#!/usr/bin/env bash
# Check `tive export --for llama-factory` with LLaMA-Factory itself (not part of the default test suite).
#
#   benchmarks/check_llamafactory.sh [WORK]      (default WORK: /tmp/tive-llamafactory-check)
#
# 1. makes LLaMA-Factory's own venv (benchmarks/llamafactory_venv.sh: llamafactory 0.9.5, torch 2.13.0);
# 2. with tive's venv (.venv, `make install`): demo data (120 records), `tive run` with the built-in tiny LLaVA
#    model, `tive baseline --method random`, `tive export --for llama-factory`;
# 3. with LLaMA-Factory's venv: benchmarks/check_llamafactory.py loads each exported dataset with LLaMA-Factory's
#    loader and trains two steps on CPU; results (or the exact error) in WORK/run/llamafactory_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-/tmp/tive-llamafactory-check}"
LF_VENV="${LF_VENV:-.venv-llamafactory}"
TIVE_PY="${TIVE_PY:-.venv/bin/python}"
benchmarks/llamafactory_venv.sh "$LF_VENV"
if [ -d "$WORK/run/export" ] && [ -n "${REUSE_RUN:-}" ]; then "$LF_VENV/bin/python" benchmarks/check_llamafactory.py "$WORK/run"; exit $?; fi
rm -rf "$WORK" && mkdir -p "$WORK"
"$TIVE_PY" -c "from tive.demo_data import make_demo_dataset; from pathlib import Path; print(make_demo_dataset(Path('$WORK/data'), n_records=120, seed=0))"
"$TIVE_PY" -m tive run "$WORK/data/demo.json" --images "$WORK/data/images" --task-field dataset --model tiny \
    --proj-dim 256 --budget 0.2 --out "$WORK/run"
"$TIVE_PY" -m tive baseline "$WORK/run" --method random
"$TIVE_PY" -m tive export "$WORK/run" --for llama-factory
"$LF_VENV/bin/python" benchmarks/check_llamafactory.py "$WORK/run"
