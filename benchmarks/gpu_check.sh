#!/usr/bin/env bash
# The one-call GPU check (issue 23): on a machine with a CUDA GPU and no network, install what is missing
# from the wheels carried with the call (benchmarks/gpu_wheels.sh fills wheels/), run the GPU tests and
# the timed runs, and write benchmarks/results_gpu.json: the GPU's name, then each step's wall seconds
# and exit code, with the figures it measured. Every step has a time limit, so the whole check fits in
# 10 minutes of wall time including installation (the limits sum to 550 s, plus 5 s of grace each); a
# step past its limit records exit code 124. Carry wheels/ with the call; results_gpu.json goes where
# GPU_CHECK_OUT says (e.g. $OUT/results_gpu.json), the step logs stay in benchmarks/gpu_check/.
#
#     benchmarks/gpu_check.sh              # on the GPU machine, from the repository root
#     benchmarks/gpu_check.sh --dry-run    # the same steps on the CPU at a tiny size (tests/test_gpu_check.py)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORK=${GPU_CHECK_WORK:-benchmarks/gpu_check}
OUT=${GPU_CHECK_OUT:-benchmarks/results_gpu.json}
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
rm -rf "$WORK" && mkdir -p "$WORK"
STEPS="$WORK/steps.jsonl"
: > "$STEPS"
export HF_HOME="$WORK/hf" HF_HUB_OFFLINE=1 MI_BRIDGE_CACHE="$WORK/cache" TOKENIZERS_PARALLELISM=false

# step NAME LIMIT_S FIGURES_FILE COMMAND...: run it under `timeout`, append {name, wall_s, exit_code}.
step() {
  local name=$1 limit=$2 figures=$3 start end code ms
  shift 3
  echo "== $name (limit ${limit}s)" >&2
  start=$(date +%s%N)
  timeout --kill-after=5 "$limit" "$@" > "$WORK/$name.log" 2>&1
  code=$?
  end=$(date +%s%N)
  ms=$(( (end - start) / 1000000 ))
  printf '{"name": "%s", "wall_s": %d.%03d, "exit_code": %d, "limit_s": %d, "figures": "%s", "log": "%s"}\n' \
    "$name" $(( ms / 1000 )) $(( ms % 1000 )) "$code" "$limit" "$figures" "$WORK/$name.log" >> "$STEPS"
  tail -n 3 "$WORK/$name.log" >&2
  return 0
}

install() {  # each carried wheel whose package is not installed yet; mi_bridge itself without dependencies
  local wheel name
  for wheel in wheels/*.whl; do
    [[ -e "$wheel" ]] || continue
    name=$(basename "$wheel" | cut -d- -f1)
    "$PYTHON" -m pip show --quiet "$name" > /dev/null 2>&1 && continue
    "$PYTHON" -m pip install --quiet --no-index --find-links wheels --no-deps "$wheel" || return 1
  done
  "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e . || return 1
  "$PYTHON" -c "import transformer_lens, pytest, mi_bridge; print('imports ok')"
}

if (( DRY )); then
  DEVICE=cpu TINY=(--tiny) RUN_SIZE=(--n-items 40 --seeds 1 --alphas 1 --n-bootstrap 200 --no-site-scan)
  SEED_SIZE=(--n-items 3 --n-fit 3 --seeds 1 --max-new-tokens 2 --n-bootstrap 200)
  step install 60 "" "$PYTHON" -c "import transformer_lens, mi_bridge; print('dry run: nothing installed')"
  step gpu_tests 60 "" "$PYTHON" -m pytest -q -m gpu tests/test_gpu.py -k "not toy_run"
else
  DEVICE=cuda TINY=() RUN_SIZE=() SEED_SIZE=()
  step install 45 "" install
  step gpu_tests 130 "" "$PYTHON" -m pytest -q -s -m gpu tests/test_gpu.py -p no:cacheprovider
fi
step build_caches 50 "" "$PYTHON" -m benchmarks.gpu_bench caches --hf-home "$HF_HOME" "${TINY[@]}"
# Timed runs, each in a fresh process: wall_s (from here) includes start and model loading; the figures
# file has the in-process seconds and the peak GPU memory.
PYTHIA=(--pair pythia --sender pythia-160m --receiver pythia-410m --device "$DEVICE" --no-cache)
step toy_default 35 "$WORK/toy_default.json" "$PYTHON" -m benchmarks.gpu_bench run \
  --record "$WORK/toy_default.json" toy_default -- --device "$DEVICE" --no-cache "${RUN_SIZE[@]}" --out "$WORK/runs/toy"
for dtype in bfloat16 float32; do
  step "pythia_default_$dtype" 75 "$WORK/pythia_default_$dtype.json" "$PYTHON" -m benchmarks.gpu_bench run \
    --record "$WORK/pythia_default_$dtype.json" "pythia_default_$dtype" -- "${PYTHIA[@]}" --dtype "$dtype" \
    "${RUN_SIZE[@]}" --out "$WORK/runs/pythia-$dtype"
done
step seed_protocol 100 "$WORK/seed_protocol.json" "$PYTHON" -m benchmarks.gpu_bench run \
  --record "$WORK/seed_protocol.json" seed_protocol -- "${PYTHIA[@]}" --protocol seed "${SEED_SIZE[@]}" --out "$WORK/runs/seed"
step kernels 40 "$WORK/kernels.json" "$PYTHON" -m benchmarks.gpu_bench kernels --device "$DEVICE" \
  "${TINY[@]}" --record "$WORK/kernels.json"
"$PYTHON" -m benchmarks.gpu_bench collect --steps "$STEPS" --out "$OUT"
echo "wrote $OUT" >&2
