#!/usr/bin/env bash
# The one install script used by `make demo`, `make test`, CI and the Docker image.
#
#   scripts/install.sh                   # CPU build (fbgemm-gpu-cpu) + dev tools, editable, into .venv
#   LUMSTREAM_GPU=1 scripts/install.sh   # GPU build: fbgemm-gpu instead of fbgemm-gpu-cpu
#
# Options (environment):
#   LUMSTREAM_GPU=0|1        CPU (fbgemm-gpu-cpu) or CUDA (fbgemm-gpu) build. Default 0.
#   LUMSTREAM_TORCH_INDEX    where torch (and, on GPU, fbgemm-gpu) come from:
#                              ''       pip's configured indexes (default; here a CPU build
#                                       of torch 2.13.0 lies on local disk)
#                              pytorch  the PyTorch wheel index of the build:
#                                       https://download.pytorch.org/whl/cpu, or on GPU
#                                       .../whl/$LUMSTREAM_CUDA (torch and fbgemm-gpu both
#                                       from it, so they match)
#                              URL      that index
#   LUMSTREAM_CUDA           the PyTorch CUDA flavour on GPU, e.g. cu128; default: derived
#                            from $CUDA_VERSION (set by the nvidia/cuda images: 12.8.1 -> cu128)
#   LUMSTREAM_EXTRAS         extras besides cpu/gpu, comma separated. Default "dev" (tests,
#                            linters); the image sets it empty: runtime dependencies only.
#   LUMSTREAM_EDITABLE=0|1   editable install of this checkout (default 1); the image uses 0
#                            so that the venv alone is the installed program.
#   VENV, PYTHON             the venv to create/use (.venv) and the interpreter (python3.11).
#
# Idempotent: it creates $VENV only when missing and writes $VENV/.lumstream-installed
# last, so an interrupted install is redone on the next call.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
TORCH="torch==2.13.0"
FBGEMM_VERSION="1.8.0"
TORCHREC="torchrec==1.8.0"

if [ "${LUMSTREAM_GPU:-0}" = "1" ]; then extra="gpu"; else extra="cpu"; fi
more="${LUMSTREAM_EXTRAS-dev}"  # unset: dev; set to '': none
extras="$extra${more:+,$more}"

index="${LUMSTREAM_TORCH_INDEX:-}"
if [ "$index" = "pytorch" ]; then
  if [ "$extra" = "gpu" ]; then
    cuda="${LUMSTREAM_CUDA:-}"
    if [ -z "$cuda" ]; then
      if [ -z "${CUDA_VERSION:-}" ]; then
        echo "[install] LUMSTREAM_TORCH_INDEX=pytorch on GPU needs LUMSTREAM_CUDA (e.g. cu128) or CUDA_VERSION" >&2
        exit 2
      fi
      major_minor="$(echo "$CUDA_VERSION" | cut -d. -f1,2)"
      cuda="cu${major_minor//./}"
    fi
    index="https://download.pytorch.org/whl/$cuda"
  else
    index="https://download.pytorch.org/whl/cpu"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip setuptools wheel

echo "[install] lumstream[$extras] ($TORCH from ${index:-the configured indexes}, fbgemm $extra $FBGEMM_VERSION) ..."
# torch first and alone: the pin makes pip take the CPU build that lies on local disk, or
# the build of the given PyTorch index. On GPU with an index, fbgemm-gpu comes from the
# same index (built for the same CUDA); the project install then finds both satisfied.
if [ -n "$index" ]; then
  if [ "$extra" = "gpu" ]; then
    "${PIP[@]}" install --index-url "$index" "$TORCH" "fbgemm-gpu==$FBGEMM_VERSION"
  else
    "${PIP[@]}" install --index-url "$index" "$TORCH"
  fi
else
  "${PIP[@]}" install "$TORCH"
fi
if [ "${LUMSTREAM_EDITABLE:-1}" = "1" ]; then
  "${PIP[@]}" install -e ".[$extras]"
else
  "${PIP[@]}" install ".[$extras]"
fi
# torchrec declares a dependency on the CUDA fbgemm-gpu; install it without deps.
"${PIP[@]}" install --no-deps "$TORCHREC"
"$VENV/bin/python" - <<'PY'
import fbgemm_gpu, torch, torchrec  # noqa: F401  fail the install if they do not load together
print(f"[install] ok: torch {torch.__version__}, torchrec {torchrec.__version__ if hasattr(torchrec, '__version__') else '1.8.0'}")
PY
touch "$VENV/.lumstream-installed"
