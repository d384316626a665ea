#!/usr/bin/env bash
# The GPU check: every open GPU question in one command, inside 8 minutes on an H100/H200.
#
#   bash bench/gpu_check.sh [OUTDIR]             # on a CUDA machine (OUTDIR: $OUT, else out/gpu-check)
#   bash bench/gpu_check.sh --dry-run [OUTDIR]   # on CPU: the same steps, CUDA parts skipped, micro sizes
#   bash bench/gpu_check.sh --list               # the steps and their time limits; runs nothing
#
# Steps, in order, each under its own time limit (seconds); one that fails or times out is
# reported and the rest still run:
#   info    device, driver, torch and CUDA versions
#   build   the extension against this machine's own torch (setup.py build_ext --inplace: no
#           package registry needed); the dry run only checks that the built one imports
#   tests   the tests that exercise CUDA (test_ops, test_fuzz, test_bad_input), -x off, JUnit XML
#   bench   bench/moe_ops.py: the MoE layer in bf16 at tiny, small and Show-o widths, grouped_mm
#           against torch's and a dense matmul, permute + unpermute against a device copy
#   train   train.py --preset small --moe taylor with short stages (bf16 autocast on CUDA)
#   resume  bench/resume_check.py on the small preset: killed twice, resumed, losses compared
# Ends with OUTDIR/summary.md (bench/gpu_summary.py): one table of every step's outcome and
# the numbers it produced (tokens/s, peak memory, losses, the benchmark ratios).
set -u
cd "$(dirname "$0")/.."

DRY=0
LIST=0
DIR=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --list) LIST=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg; use --dry-run, --list or an output folder" >&2
        exit 2 ;;
    *) [ -n "$DIR" ] && { echo "gpu_check.sh: give one output folder, not '$DIR' and '$arg'" >&2
                          exit 2; }
       DIR="$arg" ;;
  esac
done
DIR="${DIR:-${OUT:-out/gpu-check}}"

STEPS="info build tests bench train resume"
declare -A LIMIT=([info]=20 [build]=120 [tests]=80 [bench]=60 [train]=110 [resume]=90)

if [ "$LIST" = 1 ]; then
  total=0
  for s in $STEPS; do echo "$s ${LIMIT[$s]}s"; total=$((total + ${LIMIT[$s]})); done
  echo "total ${total}s"
  exit 0
fi

PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$DIR"
: > "$DIR/steps.tsv"
if [ "$DRY" = 1 ]; then
  # the micro model of the tests: every step runs here in seconds
  SIZE="--image-size 16 --vq-codes 16 --vq-colours 4 --vq-dim 8 --vq-channels 16 --d-model 32
        --n-layers 2 --n-heads 2 --d-ffn 64 --batch-t2i 4 --batch-mmu 4 --batch-lm 2 --taylor-batches 2"
  TRAIN_STEPS="--vq-steps 20 --dense-steps 20 --moe-steps 10"
  RESUME_STEPS="--vq-steps 10 --dense-steps 180 --moe-steps 80 --ckpt-every 50"
  export CUDA_VISIBLE_DEVICES=""
else
  SIZE=""
  TRAIN_STEPS="--vq-steps 300 --dense-steps 300 --moe-steps 200"
  RESUME_STEPS="--vq-steps 60 --dense-steps 180 --moe-steps 80 --ckpt-every 50"
  export MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
fi

step_info() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'available', torch.cuda.is_available(),
'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
  command -v nvcc >/dev/null && nvcc --version | tail -1
}
step_build() {
  if [ "$DRY" = 1 ]; then
    "$PY" -c "from minimoe import ops; assert ops.EXT_AVAILABLE, 'extension not built'; print('extension built')"
  else
    "$PY" setup.py build_ext --inplace &&
      "$PY" -c "from minimoe import ops; assert ops.EXT_AVAILABLE; import torch
print('extension built; CUDA kernels:', torch.cuda.is_available())"
  fi
}
step_tests() {
  local sel=()
  [ "$DRY" = 1 ] && sel=(-k "cpu and not fuzz")  # the dry run: a sample of the CPU cases
  "$PY" -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_fuzz.py \
    tests/test_bad_input.py "${sel[@]}" --junitxml="$DIR/tests.xml"
}
step_bench() {
  "$PY" bench/moe_ops.py --quick
}
step_train() {
  # shellcheck disable=SC2086  # SIZE and TRAIN_STEPS are lists of flags
  "$PY" train.py --preset small --moe taylor $SIZE $TRAIN_STEPS --log-every 10 \
    --sample-every 0 --eval-n 16 --no-progress --out "$DIR/train"
}
step_resume() {
  # shellcheck disable=SC2086
  "$PY" bench/resume_check.py --preset small --moe taylor $RESUME_STEPS $SIZE \
    --out "$DIR/resume"
}

for s in $STEPS; do
  echo "== $s (limit ${LIMIT[$s]} s)"
  t0=$(date +%s)
  # a subshell per step: a failing step cannot end the script, and `timeout` can end it
  export -f "step_$s"
  export DRY DIR PY SIZE TRAIN_STEPS RESUME_STEPS
  timeout --kill-after=5 "${LIMIT[$s]}" bash -c "step_$s" > "$DIR/$s.txt" 2>&1
  rc=$?
  status=ok
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && status=timeout
  [ "$status" = ok ] && [ "$rc" != 0 ] && status="failed ($rc)"
  printf '%s\t%s\t%s\n' "$s" "$status" "$(( $(date +%s) - t0 ))" >> "$DIR/steps.tsv"
  tail -n 3 "$DIR/$s.txt"
  echo "-- $s: $status"
done
"$PY" bench/gpu_summary.py "$DIR" | tee "$DIR/summary.md"
