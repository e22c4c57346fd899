#!/usr/bin/env bash
# Here, after a lease: add what a lent machine finished to the committed results.
# Usage: bash benchmarks/device/merge.sh FOLDER [RESULTS]
#   FOLDER: where the run's snapshot tarballs came back (the run tool's files_at): results-NN.tgz
#           (earlier leases returned main.tgz and rest.tgz; every *.tgz there is read)
#   RESULTS: the grid's results (default benchmarks/results/paper_grid)
# Every file the results lack is added, none is overwritten: the machine started from a copy of
# these results, so a file present on both sides is this side's own (a later CPU run's log, a
# table). New files inside existing run directories (a generation cell's gen_result.json) are
# added too. An error.txt beside a result.json is left from an earlier failed try and is removed,
# and so is a points/ folder (the search points a stopped CPU attempt kept) once the run has its
# result.json: the lent machine finished that run and removed its own copy.
set -euo pipefail
src=${1:?usage: bash benchmarks/device/merge.sh FOLDER [RESULTS]}
dest=${2:-benchmarks/results/paper_grid}
[ -d "$dest" ] || { echo "no results folder at $dest" >&2; exit 2; }
shopt -s nullglob
parts=("$src"/*.tgz)
[ ${#parts[@]} -gt 0 ] || { echo "no .tgz in $src: was the run's snapshot written?" >&2; exit 2; }
before=$(find "$dest" -type f | wc -l)
for t in "${parts[@]}"; do
  tar -xzf "$t" --skip-old-files -C "$dest"
done
n=$(( $(find "$dest" -type f | wc -l) - before ))
echo "added $n files"
find "$dest" -name error.txt | while read -r err; do
  if [ -f "$(dirname "$err")/result.json" ]; then rm "$err"; echo "removed stale $err"; else echo "FAILED run: $err"; fi
done
find "$dest" -type d -name points | while read -r pts; do
  if [ -f "$(dirname "$pts")/result.json" ]; then rm -r "$pts"; echo "removed finished run's $pts"; fi
done
