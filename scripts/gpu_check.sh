#!/usr/bin/env bash
# The first run on a real GPU, in one call of at most ~8 minutes (issue 24; engineering.md B5):
#
#   scripts/gpu_check.sh OUT [--dry-run] [--budget SECONDS] [--pack] [--only STEP,...]
#
# On the GPU machine: installs the wheels carried in .whl/ (made here by scripts/gpu_wheels.sh)
# into /tmp/site, sets CUDA_HOME to the image's toolkit when unset, then runs
# scripts/gpu_check.py (its docstring lists the steps), each step with its own timeout, all of
# them writing into OUT. --dry-run checks the same plumbing on a CPU with the CUDA simulator.
# A device call, for example:
#   run(command="bash scripts/gpu_check.sh $OUT --pack", carry=[".whl"], timeout_s=560)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PY=${PYTHON:-python3}
if [ $# -lt 1 ]; then
    echo "usage: scripts/gpu_check.sh OUT [--dry-run] [--budget SECONDS] [--pack] [--only STEP,...]" >&2
    exit 2
fi
dry=0
for a in "$@"; do [ "$a" = "--dry-run" ] && dry=1; done
if [ $dry = 0 ]; then
    if compgen -G ".whl/*.whl" > /dev/null; then
        echo "gpu_check.sh: installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site"
        if timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target /tmp/site .whl/*.whl; then
            export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
        else
            echo "gpu_check.sh: installing the carried wheels FAILED (the packages step names what is missing)"
        fi
    else
        echo "gpu_check.sh: no .whl/ folder: the packages the image lacks ($("$PY" scripts/gpu_check.py \
--wheel-list 2>/dev/null | tr '\n' ' ')) must travel as wheels: run scripts/gpu_wheels.sh here and carry .whl"
    fi
    if [ -z "${CUDA_HOME:-}" ] && [ -z "${CUDA_PATH:-}" ] && [ -d /usr/local/cuda/nvvm ]; then
        export CUDA_HOME=/usr/local/cuda  # numba-cuda finds libNVVM there (B5 item 1)
    fi
    command -v nvidia-smi > /dev/null && nvidia-smi -L
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
timeout --kill-after=10 "${GPU_CHECK_TIMEOUT:-570}" "$PY" scripts/gpu_check.py "$@"
