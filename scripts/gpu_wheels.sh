#!/usr/bin/env bash
# Download, here, the wheels the GPU image lacks (for Python 3.12, manylinux x86-64) into .whl/,
# which a device call then carries (carry: [".whl"]) and scripts/gpu_check.sh installs.
#
#   scripts/gpu_wheels.sh           download into .whl/ (and add /.whl/ to .git/info/exclude)
#   scripts/gpu_wheels.sh --list    only print the list (name==version, one a line)
#
# The list is computed by scripts/gpu_check.py --wheel-list: the project's dependencies, its gpu
# extra and the test runner's needs, with their own dependencies, minus the packages the image
# already has (/work/.library/device/KINDS.md), pinned to the versions installed here. Never add
# nvidia-nvvm: the image's own toolkit (CUDA_HOME=/usr/local/cuda) matches its driver, a newer
# NVVM wheel writes PTX the driver rejects (engineering.md section B5, item 2).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PY=${PYTHON:-python3}
list=$("$PY" scripts/gpu_check.py --wheel-list)
if [ "${1:-}" = "--list" ]; then
    printf '%s\n' "$list"
    exit 0
fi
if printf '%s\n' "$list" | grep -q "not installed here"; then
    echo "gpu_wheels: some needs are not installed here, so no version can be pinned:" >&2
    printf '%s\n' "$list" | grep "not installed here" >&2
    exit 2
fi
mkdir -p .whl
if [ -d .git/info ] && ! grep -qx '/.whl/' .git/info/exclude 2>/dev/null; then
    echo '/.whl/' >> .git/info/exclude
fi
for spec in $list; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec"
done
ls -1 .whl
du -sh .whl
