#!/usr/bin/env bash
# One prepared device call that brings back everything a GPU must show (../.library/device/README.md),
# in at most 5 minutes, so that a fix and a rerun fit in a session's 15 minutes of device time.
#
# From the repository root, once per session (.data/ is git-ignored, so name it in `carry`):
#
#   mkdir -p .data && cp ../shared/data/cifar10-jpeg.tar.gz .data/
#   device run:  bash bench/device_run.sh all       carry [".data"], timeout_s 330
#
# Phases, each under its own limit (a ceiling; SIGINT 5 s before the limit, SIGKILL at it), and all of
# them under one budget of T_TOTAL = 300 s: a phase never gets more than what is left of it, and one
# with less than 5 s left is skipped (and says so). The limits below add up to 295 s of it.
#
#   preflight   (20 s)  GPU, driver and library versions; the Python packages the phases need (missing
#                       ones stop the script with exit 2; a preflight cut by its limit does not)
#   data        (20 s)  the CIFAR-10 JPEG archive decoded once into the cache every later phase reads
#   checks      (55 s)  bench/replay_check.py: a deterministic forward+backward of every network family;
#                       a ResNet-18 run replayed bit for bit against pass 1; SGD, momentum and capturable
#                       Adam each with CUDA graphs against the same run without, bitwise, with both passes
#                       on the graph path (no fallback) and a smaller last batch (1,000 images, 5 epochs)
#   cost        (60 s)  bench/step_cost.py for ResNet-18, ResNet-34 and VGG-16 at strict fp32 (the runner's
#                       precision), ResNet-18 at TF32 too: typical loop, the two passes, as CUDA graphs, and
#                       the runner with and without graphs, side by side; each loop's path recorded
#   concurrency (40 s)  bench/concurrency.py: 1, 2 and 4 ResNet-18 runs at once, their traces against one's
#   lite-bn     (35 s)  the `lite` bn suite with --jobs 4 (seed-major: seed 0 of every configuration
#   report-bn   (10 s)    first); a suite cut by its limit keeps its finished runs, and its report, built
#   lite-optimizer (35 s)  in report-*, says which runs are missing. A rerun of `lite SUITE` on the
#   report-optimizer (10 s)  same (warm) machine resumes them ($GPCHECK_REPORTS persists there)
#   pack        (10 s)  the reports as one tarball (traces, reports, figures; no checkpoints)
#
# Every script writes its JSON after every network, concurrency level and run, so a phase cut by
# its limit keeps what it measured. What comes back is one flat folder, $OUT, of 7 files, each at
# most 16 MiB (the device returns at most 8): device.txt (GPU, driver, versions), device.log (all
# output), phases.jsonl (one line per phase: limit, seconds it ran, exit status, whether it was cut,
# the files it left and their sizes), replay_check.json, step_cost.json, concurrency.json and
# reports.tar.gz. Unpack the tarball into reports/, copy the JSON to bench/results/, and commit.
#
# GPCHECK_DRY_RUN=1 runs the same phases on the CPU at tiny sizes (the `smoke` preset instead of
# `lite`), with every limit multiplied by GPCHECK_DRY_SCALE (default 8: a shared CPU is slower), so
# the script cannot rot unnoticed: tests/test_bench.py runs it in CI and checks the budget and
# every phase's files from phases.jsonl.
#
# Usage: bash bench/device_run.sh all | checks | cost | concurrency | lite [SUITE...]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 GPCHECK_CACHE=${GPCHECK_CACHE:-/tmp/gpcheck-cache}
OUT=${OUT:-/tmp/gpcheck-out}
REPORTS=${GPCHECK_REPORTS:-/tmp/gpcheck-reports}
mkdir -p "$OUT" "$REPORTS"
PY=${PYTHON:-python3}
DRY=${GPCHECK_DRY_RUN:-0}
ARCHIVE=.data/cifar10-jpeg.tar.gz
[ -f "$ARCHIVE" ] || ARCHIVE=../shared/data/cifar10-jpeg.tar.gz
LOG="$OUT/device.log"
PHASES="$OUT/phases.jsonl"
exec > >(tee -a "$LOG") 2>&1

if [ "$DRY" = 1 ]; then
  DEVICE=cpu PRESET=smoke SCALE=${GPCHECK_DRY_SCALE:-8} JOBS=1
  CHECK_ARGS=(--width 0.125 --subset 160 --epochs 2 --batch-size 64)
  COST_ARGS=(--networks vgg11 --width 0.125 --steps 2 --warmup 1 --workers 0 --images 256 --runner-images 128
             --runner-epochs 1 --batch-size 64)
  CONC_ARGS=(--network vgg11 --width 0.125 --images 128 --epochs 1 --batch-size 64 --concurrency 1 2 --threads 1)
else
  DEVICE=cuda PRESET=lite SCALE=1 JOBS=4
  CHECK_ARGS=(--subset 1000 --epochs 5)
  COST_ARGS=(--networks resnet18 resnet34 vgg16 --tf32 off --tf32-also resnet18 --steps 30 --warmup 5 --workers 2
             --images 4096 --runner-images 1000 --runner-epochs 2)
  CONC_ARGS=(--network resnet18 --images 2048 --epochs 2 --concurrency 1 2 4)
fi
T_TOTAL=${T_TOTAL:-300} GRACE=5
T_PREFLIGHT=${T_PREFLIGHT:-20} T_DATA=${T_DATA:-20} T_CHECKS=${T_CHECKS:-55} T_COST=${T_COST:-60}
T_CONC=${T_CONC:-40} T_LITE=${T_LITE:-35} T_REPORT=${T_REPORT:-10} T_PACK=${T_PACK:-10}
START=$SECONDS

# phase NAME LIMIT FILES CMD...: run CMD under min(LIMIT, what is left of the budget) seconds (x SCALE
# in a dry run), SIGINT GRACE s before its end and SIGKILL at it; append its record to phases.jsonl.
# FILES: the files in $OUT the phase writes (comma-separated, may be empty). Returns CMD's status.
phase() {
  local name=$1 limit=$2 files=$3 rc=0 t0 left here cut=false ran sizes="" f g
  shift 3
  left=$(( T_TOTAL - (SECONDS - START) / SCALE ))
  here=$(( (limit < left ? limit : left) * SCALE ))
  t0=$SECONDS
  if [ "$left" -lt 5 ]; then
    echo "== $name skipped: ${left} s of the ${T_TOTAL} s budget left"
    rc=125
  else
    echo "== $name (limit ${limit} s$([ "$SCALE" = 1 ] || echo ", ${here} s in this dry run"))"
    g=$(( here > 2 * GRACE ? GRACE : (here + 1) / 2 ))  # SIGINT g s before the end, SIGKILL at it
    timeout -k "$g" -s INT "$(( here - g > 0 ? here - g : 1 ))" "$@" || rc=$?
    case $rc in 124|130|137) cut=true ;; esac
  fi
  ran=$(( SECONDS - t0 ))
  for f in ${files//,/ }; do
    [ -f "$OUT/$f" ] && sizes="$sizes${sizes:+, }\"$f\": $(stat -c %s "$OUT/$f")"
  done
  printf '{"phase": "%s", "limit_s": %d, "limit_here_s": %d, "ran_s": %d, "rc": %d, "cut": %s, "skipped": %s, "files": {%s}}\n' \
    "$name" "$limit" "$here" "$ran" "$rc" "$cut" "$([ $rc = 125 ] && echo true || echo false)" "$sizes" >>"$PHASES"
  [ "$cut" = true ] && echo "== $name was cut at its limit (exit $rc); what it wrote is kept"
  return $rc
}

preflight_py() {
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
}

preflight_all() {
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  preflight_py
}

preflight() {
  phase preflight "$T_PREFLIGHT" device.txt bash -c "$(declare -f preflight_py preflight_all); PY='$PY'
    set -o pipefail; preflight_all | tee '$OUT/device.txt'"
}

data() {
  phase data "$T_DATA" "" "$PY" -c "from deep.data import load_split; s = load_split('cifar10-jpeg', 'train', root='$ARCHIVE'); print('decoded', len(s), 'images into the cache')"
}

checks() {
  phase checks "$T_CHECKS" replay_check.json "$PY" bench/replay_check.py --device "$DEVICE" --data-root "$ARCHIVE" \
    "${CHECK_ARGS[@]}" --out "$OUT/replay_check.json"
}

cost() {
  phase cost "$T_COST" step_cost.json "$PY" bench/step_cost.py --device "$DEVICE" "${COST_ARGS[@]}" \
    --out "$OUT/step_cost.json"
}

concurrency() {
  phase concurrency "$T_CONC" concurrency.json "$PY" bench/concurrency.py --device "$DEVICE" "${CONC_ARGS[@]}" \
    --out "$OUT/concurrency.json"
}

lite() {
  local suites=("$@") rc=0 s src
  [ ${#suites[@]} -gt 0 ] || suites=(bn optimizer)
  for s in "${suites[@]}"; do
    src=0
    phase "lite-$s" "$T_LITE" "" "$PY" -m validation.cli deep --suite "$s" --preset "$PRESET" --dataset cifar10-jpeg \
      --data-root "$ARCHIVE" --device "$DEVICE" --jobs "$JOBS" --out "$REPORTS" --quiet || src=$?
    [ $src = 0 ] || rc=1  # 1: some runs ended in an error (their report says which); else cut or refused
    # a suite cut by its limit: build the report of what finished (the missing runs are rows that say so)
    if { [ $src = 124 ] || [ $src = 130 ] || [ $src = 137 ]; } && [ -d "$REPORTS/$s-$PRESET-cifar10-jpeg/runs" ]; then
      phase "report-$s" "$T_REPORT" "" "$PY" -m validation.cli report "$REPORTS/$s-$PRESET-cifar10-jpeg" || rc=1
    fi
  done
  pack || rc=1
  return $rc
}

pack_now() {
  # traces, reports and figures come back; checkpoints, theta files and locks stay behind
  local ex=(--exclude='*.pt' --exclude='*.pt.sha256' --exclude='checkpoints' --exclude='.*.lock' --exclude='.*.tmp')
  tar -czf "$OUT/reports.tar.gz" "${ex[@]}" -C "$REPORTS" . || return 1
  if [ "$(stat -c %s "$OUT/reports.tar.gz")" -gt $(( 16 * 1024 * 1024 )) ]; then
    echo "reports.tar.gz is over 16 MiB: packed again without the figures"
    tar -czf "$OUT/reports.tar.gz" "${ex[@]}" --exclude='*.png' -C "$REPORTS" . || return 1
  fi
}

pack() {
  phase pack "$T_PACK" reports.tar.gz bash -c "$(declare -f pack_now); OUT='$OUT' REPORTS='$REPORTS'; pack_now"
}

status=0
# the first line: the budget and every phase's limit (the dry run in CI checks that they fit)
printf '{"budget_s": %d, "scale": %d, "limits": {"preflight": %d, "data": %d, "checks": %d, "cost": %d, "concurrency": %d, "lite-bn": %d, "report-bn": %d, "lite-optimizer": %d, "report-optimizer": %d, "pack": %d}}\n' \
  "$T_TOTAL" "$SCALE" "$T_PREFLIGHT" "$T_DATA" "$T_CHECKS" "$T_COST" "$T_CONC" "$T_LITE" "$T_REPORT" "$T_LITE" "$T_REPORT" \
  "$T_PACK" >"$PHASES"
# a preflight that found a package missing stops the script; one cut by its limit (a slow import) does not
pre() {
  local rc=0
  preflight || rc=$?
  case $rc in 0) ;; 124|130|137) status=1 ;; *) exit 2 ;; esac
}
case "${1:-all}" in
  all)    pre; data || status=1; checks || status=1; cost || status=1; concurrency || status=1
          lite bn optimizer || status=1 ;;
  checks) pre; data || status=1; checks || status=1 ;;
  cost)   pre; cost || status=1 ;;
  concurrency) pre; concurrency || status=1 ;;
  lite)   pre; data || status=1; shift; lite "$@" || status=1 ;;
  *) echo "usage: bash bench/device_run.sh all | checks | cost | concurrency | lite [SUITE...]" >&2; exit 2 ;;
esac
echo "== done in $(( SECONDS - START )) s (budget ${T_TOTAL} s$([ "$SCALE" = 1 ] || echo " x $SCALE in this dry run")), exit $status; files in $OUT:"
ls -la "$OUT"
exit $status
