#!/usr/bin/env bash
# One prepared device call that brings back everything a GPU must show (../.library/device/README.md).
#
# From the repository root, once per session (.data/ is git-ignored, so name it in `carry`):
#
#   mkdir -p .data && cp ../shared/data/cifar10-jpeg.tar.gz .data/
#   device run:  bash bench/device_run.sh all       carry [".data"], timeout_s 570
#
# Phases, each under its own time limit so that one slow phase cannot eat the others (9 minutes in
# all on one H100/H200; the limits are a ceiling, the estimates in the README are the expectation):
#
#   checks   (90 s)   a deterministic forward+backward of every network family in CUDA deterministic mode;
#                     a measured ResNet-18 run (its steps CUDA graph replays) whose replay is compared with
#                     pass 1 bit for bit; the same run without graphs, whose trace must equal it bit for bit
#                     (the graph path and its eager fallback); and an Adam run with graphs (capturable mode)
#   cost     (150 s)  bench/step_cost.py for ResNet-18, ResNet-34 and VGG-16: typical loop vs the two passes,
#                     each at strict fp32 and at TF32 (--tf32 both), side by side; the runner with and
#                     without CUDA graphs at strict fp32
#   concurrency (60 s)  bench/concurrency.py: throughput of the GPU with 1, 2 and 4 ResNet-18 runs at once
#                     (what --jobs N on one GPU does), and that their traces equal one run's
#   lite     (115 s each)  the `lite` bn and optimizer suites; a suite cut by its limit keeps its finished
#                     runs, and its report says which runs are missing
#
# Everything lands in $OUT, at most 8 files (the device returns no more): device.txt (GPU, driver,
# versions), device.log (all output), replay_check.json, step_cost.json, concurrency.json, lite-reports.tar.gz
# (traces, reports and figures, no checkpoints). Unpack the tarball into reports/, copy the JSON to
# bench/results/, and commit.
#
# GPCHECK_DRY_RUN=1 runs the same phases on the CPU at tiny sizes (the `smoke` preset instead of
# `lite`), so the script cannot rot unnoticed: tests/test_bench.py runs it in CI.
#
# Usage: bash bench/device_run.sh all | checks | cost | concurrency | lite [SUITE...]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 GPCHECK_CACHE=${GPCHECK_CACHE:-/tmp/gpcheck-cache}
OUT=${OUT:-/tmp/gpcheck-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DRY=${GPCHECK_DRY_RUN:-0}
ARCHIVE=.data/cifar10-jpeg.tar.gz
[ -f "$ARCHIVE" ] || ARCHIVE=../shared/data/cifar10-jpeg.tar.gz
LOG="$OUT/device.log"
exec > >(tee -a "$LOG") 2>&1

if [ "$DRY" = 1 ]; then
  DEVICE=cpu PRESET=smoke
  CHECK_ARGS=(--width 0.125 --subset 128 --epochs 2 --batch-size 64)
  COST_ARGS=(--networks vgg11 --width 0.125 --steps 2 --warmup 1 --workers 0 --images 256 --runner-images 128
             --runner-epochs 1 --batch-size 64)
  CONC_ARGS=(--network vgg11 --width 0.125 --images 128 --epochs 1 --batch-size 64 --concurrency 1 2 --threads 1)
else
  DEVICE=cuda PRESET=lite
  CHECK_ARGS=(--subset 2048 --epochs 2)
  COST_ARGS=(--networks resnet18 resnet34 vgg16 --tf32 both)
  CONC_ARGS=(--network resnet18 --images 4096 --epochs 2 --concurrency 1 2 4)
fi
T_CHECKS=${T_CHECKS:-90} T_COST=${T_COST:-150} T_CONC=${T_CONC:-60} T_LITE=${T_LITE:-115}

preflight() {
  {
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
missing = []
for m in ("torch", "torchvision", "numpy", "scipy", "matplotlib", "click", "tqdm", "PIL"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"))
    except ImportError:
        missing.append(m)
if missing:
    raise SystemExit(f"missing Python packages: {', '.join(missing)}; carry them as wheels (device README)")
import torch
print("cuda available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
  } | tee "$OUT/device.txt"
  return "${PIPESTATUS[0]}"
}

checks() {
  echo "== checks (limit ${T_CHECKS} s)"
  timeout -s INT "$T_CHECKS" "$PY" bench/replay_check.py --device "$DEVICE" --data-root "$ARCHIVE" "${CHECK_ARGS[@]}" \
    --out "$OUT/replay_check.json"
}

cost() {
  echo "== cost (limit ${T_COST} s)"
  timeout -s INT "$T_COST" "$PY" bench/step_cost.py --device "$DEVICE" "${COST_ARGS[@]}" --out "$OUT/step_cost.json"
}

concurrency() {
  echo "== concurrency (limit ${T_CONC} s)"
  timeout -s INT "$T_CONC" "$PY" bench/concurrency.py --device "$DEVICE" "${CONC_ARGS[@]}" --out "$OUT/concurrency.json"
}

lite() {
  local suites=("$@") rc=0
  [ ${#suites[@]} -gt 0 ] || suites=(bn optimizer)
  for s in "${suites[@]}"; do
    echo "== $PRESET $s (limit ${T_LITE} s)"
    timeout -s INT "$T_LITE" "$PY" -m validation.cli deep --suite "$s" --preset "$PRESET" --dataset cifar10-jpeg \
      --data-root "$ARCHIVE" --device "$DEVICE" --out "$OUT/reports" --quiet || rc=$?
    # a suite cut by its limit: report what finished (the missing runs are rows that say so)
    [ -d "$OUT/reports/$s-$PRESET-cifar10-jpeg/runs" ] && "$PY" -m validation.cli report "$OUT/reports/$s-$PRESET-cifar10-jpeg" >/dev/null
  done
  # traces, reports and figures come back; checkpoints, theta files and locks stay behind
  tar -czf "$OUT/lite-reports.tar.gz" --exclude='*.pt' --exclude='*.pt.sha256' --exclude='checkpoints' \
    --exclude='.*.lock' --exclude='.*.tmp' -C "$OUT/reports" . && rm -rf "$OUT/reports"
  return $rc
}

status=0
case "${1:-all}" in
  all)    preflight || exit 2; checks || status=1; cost || status=1; concurrency || status=1
          lite bn optimizer || status=1 ;;
  concurrency) preflight || exit 2; concurrency || status=1 ;;
  checks) preflight || exit 2; checks || status=1 ;;
  cost)   preflight || exit 2; cost || status=1 ;;
  lite)   preflight || exit 2; shift; lite "$@" || status=1 ;;
  *) echo "usage: bash bench/device_run.sh all | checks | cost | concurrency | lite [SUITE...]" >&2; exit 2 ;;
esac
echo "== done, exit $status; files in $OUT:"; ls -la "$OUT"
exit $status
