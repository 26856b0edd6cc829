#!/usr/bin/env bash
# Create the separate virtual environment in which benchmarks/check_llamafactory.py runs LLaMA-Factory.
#
# llamafactory 0.9.5 pins transformers <= 5.6, peft <= 0.18.1, accelerate <= 1.11 and datasets <= 4.0, which
# tive's own environment need not satisfy, so it lives in its own venv. torch is pinned (2.13.0, the CPU wheel this
# project's machines carry); without the pin pip would pull another torch. Its companions cannot match it here:
# - torchvision 0.28.0 (torch 2.13.0's match) exists on PyPI only as a CUDA build; with the CPU torch its
#   extension does not load (libc10_cuda.so) and `import torchvision` fails ("operator torchvision::nms does not
#   exist"), and transformers imports it when it is installed. llamafactory never imports it, so it is left out.
# - torchaudio has no release for torch 2.13 on PyPI (the newest, 2.11.1, pins torch 2.11.1 and is a CUDA build),
#   yet llamafactory.data.mm_plugin imports it at the top. 2.11.1 is installed without its dependencies and its
#   compiled extension removed: torchaudio then imports as Python only (its loader skips an absent extension);
#   only audio data would need it.
# llamafactory's other requirements are installed explicitly, under the same torch pin.
# Usage: benchmarks/llamafactory_venv.sh [VENV]   (default: .venv-llamafactory)
set -euo pipefail
VENV="${1:-.venv-llamafactory}"
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH:-torch==2.13.0}"
TORCHAUDIO="${TORCHAUDIO:-torchaudio==2.11.1}"
if [ ! -f "$VENV/.installed" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet "$TORCH"
    "$VENV/bin/python" -m pip install --quiet --no-deps "$TORCHAUDIO" "llamafactory==0.9.5"
    rm -f "$VENV"/lib/python3*/site-packages/torchaudio/lib/*.so
    # llamafactory 0.9.5's Requires-Dist, less torch / torchaudio (installed above) and torchvision (see above).
    "$VENV/bin/python" -m pip install --quiet "$TORCH" \
        "accelerate>=1.3.0,<=1.11.0" "av>=10.0.0,<=16.0.0" "datasets>=2.16.0,<=4.0.0" einops fastapi fire \
        "gradio>=4.38.0,<=5.50.0" hf-transfer "matplotlib>=3.7.0" modelscope numpy omegaconf packaging pandas \
        "peft>=0.18.0,<=0.18.1" protobuf pydantic pyyaml safetensors scipy sentencepiece sse-starlette tiktoken \
        "torchdata>=0.10.0,<=0.11.0" "transformers>=4.55.0,<=5.6.0,!=4.52.0,!=4.57.0" "trl>=0.18.0,<=0.24.0" \
        "tyro<0.9.0" uvicorn
    touch "$VENV/.installed"
fi
"$VENV/bin/python" -c "import torch, torchaudio, transformers, peft, datasets, accelerate, llamafactory.data; from importlib.metadata import version; print(' '.join(f'{p} {version(p)}' for p in ('llamafactory', 'torch', 'torchaudio', 'transformers', 'peft', 'accelerate', 'datasets')))"
