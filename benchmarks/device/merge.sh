#!/usr/bin/env bash
# Here, after a lease: add what a lent machine finished to the committed results.
# Usage: bash benchmarks/device/merge.sh FOLDER [RESULTS]
#   FOLDER: where the run's main.tgz and rest.tgz came back (the run tool's files_at)
#   RESULTS: the grid's results (default benchmarks/results/paper_grid)
# Every file the results lack is added, none is overwritten: the machine started from a copy of
# these results, so a file present on both sides is this side's own (a later CPU run's log, a
# table). New files inside existing run directories (a generation cell's gen_result.json) are
# added too. An error.txt beside a result.json is left from an earlier failed try and is removed.
set -euo pipefail
src=${1:?usage: bash benchmarks/device/merge.sh FOLDER [RESULTS]}
dest=${2:-benchmarks/results/paper_grid}
[ -d "$dest" ] || { echo "no results folder at $dest" >&2; exit 2; }
n=0
for t in main rest; do
  [ -f "$src/$t.tgz" ] || { echo "$src/$t.tgz is missing: was the run's snapshot written?" >&2; exit 2; }
  before=$(find "$dest" -type f | wc -l)
  tar -xzf "$src/$t.tgz" --skip-old-files -C "$dest"
  n=$((n + $(find "$dest" -type f | wc -l) - before))
done
echo "added $n files"
find "$dest" -name error.txt | while read -r err; do
  if [ -f "$(dirname "$err")/result.json" ]; then rm "$err"; echo "removed stale $err"; else echo "FAILED run: $err"; fi
done
