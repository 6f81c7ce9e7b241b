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
#   LUMSTREAM_PROMETHEUS=0|1 fetch Prometheus (with promtool) and Alertmanager, Debian's
#                            prometheus and prometheus-alertmanager packages, into
#                            $VENV/opt/prometheus (default 1: `make test` runs promtool and a
#                            real Prometheus; `lumstream monitor` starts both). No root:
#                            `apt-get download` + `dpkg -x`; when apt's package lists are
#                            missing (a fresh CI container) they are fetched into a scratch
#                            directory first. The image sets 0 (deploy/ uses Prometheus' image).
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

# Prometheus, promtool and Alertmanager (monitoring/tools.py finds them here).
install_prometheus() (
  home="$VENV/opt/prometheus"
  packages=(prometheus prometheus-alertmanager)
  if [ -x "$home/usr/bin/promtool" ] && [ -x "$home/usr/bin/prometheus" ] \
      && [ -x "$home/usr/bin/prometheus-alertmanager" ]; then
    return 0
  fi
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  echo "[install] Prometheus and Alertmanager (Debian: ${packages[*]}) into $home ..."
  if ! (cd "$scratch" && apt-get download "${packages[@]}" >/dev/null 2>&1); then
    # no package lists (or none readable): fetch them into the scratch directory, no root
    apt=(-o "Dir::State::Lists=$scratch/lists" -o "Dir::Cache=$scratch/cache"
         -o Debug::NoLocking=1)
    mkdir -p "$scratch/lists/partial" "$scratch/cache/archives/partial"
    apt-get "${apt[@]}" update >/dev/null
    (cd "$scratch" && apt-get "${apt[@]}" download "${packages[@]}" >/dev/null)
  fi
  mkdir -p "$home"
  for deb in "$scratch"/*.deb; do dpkg -x "$deb" "$home"; done
  # Debian's alertmanager reads its templates from /usr/share/prometheus/alertmanager (upstream
  # embeds them); rewrite that path to the same-length relative "usr//share/..." so the
  # unpacked copy, run from $home (monitoring/stack.py), finds its own without root.
  "$VENV/bin/python" - "$home/usr/bin/prometheus-alertmanager" <<'PY'
import sys
path = sys.argv[1]
old, new = b"/usr/share/prometheus/alertmanager", b"usr//share/prometheus/alertmanager"
data = open(path, "rb").read()
if old in data:
    open(path, "wb").write(data.replace(old, new))
PY
  "$home/usr/bin/promtool" --version >/dev/null
  echo "[install] ok: $("$home/usr/bin/prometheus" --version 2>&1 | head -1)"
)
if [ "${LUMSTREAM_PROMETHEUS:-1}" = "1" ]; then install_prometheus; fi
touch "$VENV/.lumstream-installed"
