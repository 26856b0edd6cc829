#!/usr/bin/env bash
# Create the separate virtual environment in which benchmarks/check_llamafactory.py runs LLaMA-Factory.
#
# llamafactory 0.9.5 pins transformers <= 5.6, peft <= 0.18.1, accelerate <= 1.11 and datasets <= 4.0, which
# tive's own environment need not satisfy, so it lives in its own venv. torch and torchvision are pinned to one
# matching build (torch 2.13.0 is the CPU wheel this project's machines carry; torchvision 0.28.0 is its match);
# without the pins pip would pull another torch. torchaudio, which llamafactory requires and imports, has no
# release for torch 2.13 on PyPI (the newest is 2.11.1, pinned to torch 2.11.1), so 2.11.1 is installed without
# its dependencies and llamafactory's other requirements are installed explicitly, under the same torch pin.
# Usage: benchmarks/llamafactory_venv.sh [VENV]   (default: .venv-llamafactory)
set -euo pipefail
VENV="${1:-.venv-llamafactory}"
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH:-torch==2.13.0}"
TORCHVISION="${TORCHVISION:-torchvision==0.28.0}"
TORCHAUDIO="${TORCHAUDIO:-torchaudio==2.11.1}"
if [ ! -f "$VENV/.installed" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet "$TORCH" "$TORCHVISION"
    "$VENV/bin/python" -m pip install --quiet --no-deps "$TORCHAUDIO" "llamafactory==0.9.5"
    # llamafactory 0.9.5's Requires-Dist, less torch / torchvision / torchaudio (installed above).
    "$VENV/bin/python" -m pip install --quiet "$TORCH" "$TORCHVISION" \
        "accelerate>=1.3.0,<=1.11.0" "av>=10.0.0,<=16.0.0" "datasets>=2.16.0,<=4.0.0" einops fastapi fire \
        "gradio>=4.38.0,<=5.50.0" hf-transfer "matplotlib>=3.7.0" modelscope numpy omegaconf packaging pandas \
        "peft>=0.18.0,<=0.18.1" protobuf pydantic pyyaml safetensors scipy sentencepiece sse-starlette tiktoken \
        "torchdata>=0.10.0,<=0.11.0" "transformers>=4.55.0,<=5.6.0,!=4.52.0,!=4.57.0" "trl>=0.18.0,<=0.24.0" \
        "tyro<0.9.0" uvicorn
    touch "$VENV/.installed"
fi
"$VENV/bin/python" -c "import torch, torchvision, transformers, peft, datasets, accelerate; from importlib.metadata import version; print(' '.join(f'{p} {version(p)}' for p in ('llamafactory', 'torch', 'torchvision', 'torchaudio', 'transformers', 'peft', 'accelerate', 'datasets')))"
