#!/usr/bin/env bash
# Idempotent setup: system libraries (as root on Debian), .venv, torch first, then the project.
# Re-runs only when requirements/lock.txt, pyproject.toml or this script change (stamp keyed on their hash).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp="$VENV/.ldmpc-setup-stamp"
key=$(cat requirements/lock.txt pyproject.toml scripts/setup.sh scripts/system_deps.sh | sha256sum | cut -d' ' -f1)

bash scripts/system_deps.sh

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
  exit 0
fi
echo "[setup] creating $VENV with $($PY --version)"
"$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install -U "pip>=23" "setuptools<81" wheel
# torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
local_wheel=""
for d in ${TORCH_WHEEL_DIR:-} $("${pip[@]}" config get global.find-links 2>/dev/null || true) /opt/wheels; do
  for w in "$d"/torch-2.13.0+cpu-cp311-*.whl; do [ -f "$w" ] && local_wheel=$w && break 2; done
done
if [ -n "$local_wheel" ]; then
  echo "[setup] torch 2.13.0: CPU wheel from local disk ($local_wheel)"
  "${pip[@]}" install "$local_wheel"
else
  idx=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
  echo "[setup] torch 2.13.0: no local CPU wheel; installing the CPU build from $idx"
  "${pip[@]}" install torch==2.13.0 --index-url "$idx"
fi
"${pip[@]}" install -c requirements/lock.txt -e '.[dev]'
echo "$key" > "$stamp"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, ray, gymnasium; print("torch", torch.__version__, "ray", ray.__version__, "gymnasium", gymnasium.__version__)')"
