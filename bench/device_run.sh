#!/usr/bin/env bash
# One prepared device call (see ../.library/device/README.md). From the repository root, with the
# CIFAR-10 JPEG archive copied to .data/ (git-ignored) and `.data` named in `carry`:
#
#   mkdir -p .data && cp ../shared/data/cifar10-jpeg.tar.gz .data/
#   bash bench/device_run.sh checks          # replay check + step costs        (~3 min on an H100)
#   bash bench/device_run.sh lite bn         # one lite suite report            (~5 min target)
#
# Everything worth keeping lands in $OUT (at most 8 files come back): JSON results, logs, and a
# tarball of the reports, to unpack into reports/ and commit.
set -uo pipefail
export PYTHONUNBUFFERED=1 GPCHECK_CACHE=/tmp/gpcheck-cache
OUT=${OUT:-/tmp/gpcheck-out}
mkdir -p "$OUT"
ARCHIVE=.data/cifar10-jpeg.tar.gz
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
case "${1:-checks}" in
  checks)
    python3 bench/replay_check.py --device cuda --data-root "$ARCHIVE" --subset 5000 --epochs 3 \
      --out "$OUT/replay_check.json" 2>&1 | tee "$OUT/replay_check.log"
    python3 bench/step_cost.py --device cuda --networks resnet18 resnet34 vgg16 \
      --out "$OUT/step_cost.json" 2>&1 | tee "$OUT/step_cost.log"
    ;;
  lite)
    suite=${2:?which suite}
    python3 -m validation.cli deep --suite "$suite" --preset lite --dataset cifar10-jpeg --data-root "$ARCHIVE" \
      --device cuda --out "$OUT/reports" --quiet 2>&1 | tee "$OUT/lite-$suite.log"
    # checkpoints and theta files stay behind; traces, reports and figures come back
    tar -czf "$OUT/lite-$suite-reports.tar.gz" --exclude='*.pt' --exclude='checkpoints' -C "$OUT/reports" .
    rm -rf "$OUT/reports"
    ;;
  *) echo "usage: bench/device_run.sh checks | lite SUITE" >&2; exit 2 ;;
esac
