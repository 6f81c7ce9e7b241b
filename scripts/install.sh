#!/usr/bin/env bash
# The one install script used by `make demo`, `make test` and CI.
#
#   scripts/install.sh            # CPU build (fbgemm-gpu-cpu), into .venv
#   LUMSTREAM_GPU=1 scripts/install.sh   # GPU build: fbgemm-gpu instead of fbgemm-gpu-cpu
#                                        # (also install a CUDA torch 2.13.0 wheel from the
#                                        #  PyTorch index before running this)
#
# Idempotent: it creates .venv only when missing and writes .venv/.lumstream-installed
# last, so an interrupted install is redone on the next call.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip setuptools wheel

if [ "${LUMSTREAM_GPU:-0}" = "1" ]; then extra="gpu"; else extra="cpu"; fi
echo "[install] lumstream[$extra,dev] (torch 2.13.0, fbgemm $extra 1.8.0) ..."
# torch first and alone: the pin makes pip take the CPU build that lies on local disk.
"${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install -e ".[$extra,dev]"
# torchrec declares a dependency on the CUDA fbgemm-gpu; install it without deps.
"${PIP[@]}" install --no-deps "torchrec==1.8.0"
"$VENV/bin/python" - <<'PY'
import fbgemm_gpu, torch, torchrec  # noqa: F401  fail the install if they do not load together
print(f"[install] ok: torch {torch.__version__}, torchrec {torchrec.__version__ if hasattr(torchrec, '__version__') else '1.8.0'}")
PY
touch "$VENV/.lumstream-installed"
