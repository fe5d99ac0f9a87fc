#!/usr/bin/env bash
# The one-call GPU check (issue 23): on a machine with one CUDA GPU and no network, install what is
# missing from the wheels carried with the call, run the GPU tests and the timed runs, and write
# results_gpu.json: the GPU's name, then each step's wall seconds and exit code, with the figures it
# measured.
#
# How to run it with the device tool (one call, the machine has no network):
#   1. here, where pip reaches the index:   bash benchmarks/gpu_wheels.sh        (fills wheels/, ignored by git)
#   2. device tool `run`:  carry ["wheels"],  command "bash benchmarks/gpu_check.sh",  timeout_s 600
#   It writes into the tool's $OUT (4 flat files, all that comes back): results_gpu.json, steps.jsonl
#   (appended after every step, so a cut-off call still reports), summary.txt and gpu_check_logs.tar.gz
#   (every step's log, the pytest junit XML files, the figures and each run's results/config JSON).
#   Stdout ends with a compact summary (step, exit code, wall s) after the tail of each failed step's log.
#
# Time: the step limits below sum to 480 s including installation, under a whole-check budget of
# GPU_CHECK_BUDGET (default 540 s) that shortens or skips a step that would overrun it; a step past its
# limit records exit code 124, a skipped one null. No step's failure stops the steps after it. The most
# important measurements come first. The seed-protocol step runs a REDUCED size (40 of the 396 items,
# 1 seed, 4 new tokens, 256 fit texts) that is recorded in its "size" field: it is not the full table.
#
#     bash benchmarks/gpu_check.sh              # on the GPU machine, from anywhere
#     bash benchmarks/gpu_check.sh --dry-run    # the same steps on the CPU at a tiny size, the real
#                                               # installation included (tests/test_gpu_check.py)
#
# Environment: PYTHON (default: python3 if it has torch, else python), GPU_CHECK_WHEELS (default wheels), GPU_CHECK_WORK (logs, Hugging
# Face and activation caches, installed wheels; default benchmarks/gpu_check, never under $OUT),
# GPU_CHECK_RESULTS (default benchmarks/results_gpu.json; the dry run: $GPU_CHECK_WORK/results_gpu.json),
# GPU_CHECK_DEST (where the files that come back go; default $OUT), GPU_CHECK_ONLY (comma-separated step
# names to run, e.g. "install,seed_protocol"; default all), GPU_CHECK_BUDGET (seconds, default 540).
set -uo pipefail
cd "$(dirname "$0")/.."
CHECK_START=$(date +%s)
if [[ -z "${PYTHON:-}" ]]; then  # the interpreter that has torch: python3, else python
  PYTHON=python3
  python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)" 2> /dev/null \
    || { command -v python > /dev/null && PYTHON=python; }
fi
export PYTHON
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
WORK=${GPU_CHECK_WORK:-benchmarks/gpu_check}
DEST=${GPU_CHECK_DEST:-${OUT:-}}  # the device tool's $OUT: read, never reassigned
if (( DRY )); then RESULTS=${GPU_CHECK_RESULTS:-$WORK/results_gpu.json}; else RESULTS=${GPU_CHECK_RESULTS:-benchmarks/results_gpu.json}; fi
ONLY=${GPU_CHECK_ONLY:-}
BUDGET=${GPU_CHECK_BUDGET:-540}
export WHEELS=${GPU_CHECK_WHEELS:-wheels}
rm -rf "$WORK" && mkdir -p "$WORK/logs" "$WORK/figures" "$WORK/runs"
WORK=$(cd "$WORK" && pwd)
export SITE="$WORK/site"
LOGS="$WORK/logs" FIGURES="$WORK/figures"
[[ -n "$DEST" ]] && mkdir -p "$DEST"
STEPS="$WORK/steps.jsonl"
: > "$STEPS"
# Caches stay in $WORK, outside $OUT. Carried wheels go to $SITE; mi_bridge runs from this tree.
export HF_HOME="$WORK/hf" HF_HUB_OFFLINE=1 MI_BRIDGE_CACHE="$WORK/cache" TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

record() {  # NAME EXIT_CODE(or null) WALL_MS LIMIT FIGURES SIZE: one JSON line in steps.jsonl (and $DEST)
  "$PYTHON" - "$@" >> "$STEPS" <<'EOF'
import json, sys
name, code, ms, limit, figures, size = sys.argv[1:7]
print(json.dumps({"name": name, "exit_code": None if code == "null" else int(code),
                  "wall_s": round(int(ms) / 1000, 3), "limit_s": int(limit), "figures": figures,
                  "size": size or "full", "log": f"logs/{name}.log"}))
EOF
  [[ -n "$DEST" ]] && cp "$STEPS" "$DEST/steps.jsonl"
  return 0
}

# step NAME LIMIT_S FIGURES_FILE SIZE COMMAND...: run COMMAND (an executable, never a shell function:
# `timeout` cannot run those) under `timeout`, log to logs/NAME.log, record {name, exit_code, wall_s}.
step() {
  local name=$1 limit=$2 figures=$3 size=$4 start end code left
  shift 4
  if [[ -n "$ONLY" && ",$ONLY," != *",$name,"* ]]; then return 0; fi
  left=$(( BUDGET - ($(date +%s) - CHECK_START) - 20 ))  # 20 s kept for collecting the results
  if (( left < 10 )); then
    echo "== $name: skipped, the check's ${BUDGET}s budget is spent"
    record "$name" null 0 "$limit" "" "$size"
    return 0
  fi
  (( limit > left )) && limit=$left
  echo "== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
  start=$(date +%s%N)
  timeout --kill-after=5 "$limit" "$@" > "$LOGS/$name.log" 2>&1 < /dev/null
  code=$?
  end=$(date +%s%N)
  echo "   $name: exit $code, $(( (end - start) / 1000000 )) ms"
  record "$name" "$code" $(( (end - start) / 1000000 )) "$limit" "$figures" "$size"
  return 0
}

# The carried wheels whose distributions are not installed yet, in ONE pip call into $SITE (--target:
# no write to the system's site-packages and no PEP 668 refusal), then the imports, then `pip check`
# (logged, not fatal). Without pip, the wheels (pure Python) are unpacked into $SITE instead.
# Run as `bash -c install_wheels` (exported below): never as a bare `install`, which is coreutils'.
install_wheels() {
  local wheels=() missing=()
  shopt -s nullglob
  [[ -d "$WHEELS" ]] && wheels=("$WHEELS"/*.whl)
  echo "wheels carried in $WHEELS: ${#wheels[@]}"
  if (( ${#wheels[@]} )); then
    mapfile -t missing < <("$PYTHON" - "${wheels[@]}" <<'EOF'
import importlib.metadata as metadata, os, sys
for path in sys.argv[1:]:
    name = os.path.basename(path).split("-")[0]
    try:
        print(f"present: {name} {metadata.version(name)}", file=sys.stderr)
    except metadata.PackageNotFoundError:
        print(path)
EOF
)
  fi
  echo "to install: ${#missing[@]} ${missing[*]}"
  mkdir -p "$SITE"
  if (( ${#missing[@]} )); then
    if "$PYTHON" -m pip --version > /dev/null 2>&1; then
      "$PYTHON" -m pip install --no-index --find-links "$WHEELS" --no-deps --no-compile \
        --disable-pip-version-check --no-warn-script-location --target "$SITE" "${missing[@]}" || return 1
    else
      echo "no pip: unpacking the wheels into $SITE"
      local wheel
      for wheel in "${missing[@]}"; do "$PYTHON" -m zipfile -e "$wheel" "$SITE" || return 1; done
    fi
  fi
  "$PYTHON" - <<'EOF' || return 1
import importlib.metadata as metadata
import torch
import beartype, datasets, pytest, transformer_lens, mi_bridge  # noqa: F401  (what the steps need)
for name in ("torch", "transformers", "huggingface_hub", "transformer_lens", "datasets", "pytest"):
    print(f"{name} {metadata.version(name)}")
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
print(f"imports ok; CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}, GPU: {gpu}")
EOF
  echo "--- pip check (not fatal)"
  "$PYTHON" -m pip check --disable-pip-version-check 2>&1 || true
  return 0
}
export -f install_wheels

if (( DRY )); then
  DEVICE=cpu TINY=(--tiny) RUN_SIZE=(--n-items 40 --seeds 1 --alphas 1 --n-bootstrap 200 --no-site-scan)
  RUN_SIZE_NOTE="dry run: 40 items, 1 seed, alpha 1, no site scan"
  SEED_SIZE=(--n-items 3 --n-fit 3 --seeds 1 --max-new-tokens 2 --n-bootstrap 200)
  SEED_SIZE_NOTE="dry run: 3 of 396 items, 3 fit texts, 1 seed, 2 new tokens"
else
  DEVICE=cuda TINY=() RUN_SIZE=() RUN_SIZE_NOTE=""
  # REDUCED: generation is sequential over the prompt-length groups (56 for all 396 items, 20 for 40),
  # one forward per new token; the full table (396 items, 3 seeds, 64 tokens) does not fit this check.
  SEED_SIZE=(--n-items 40 --n-fit 256 --seeds 1 --max-new-tokens 4)
  SEED_SIZE_NOTE="REDUCED, not the full table: 40 of 396 items, 256 fit texts, 1 seed, 4 new tokens (full: 396 items, 5000 fit texts, 3 seeds, 64 new tokens)"
fi
PYTEST=("$PYTHON" -m pytest -p no:cacheprovider -v -rA -s -m gpu tests/test_gpu.py)  # -v: a cut-off run still names what passed
PYTHIA=(--pair pythia --sender pythia-160m --receiver pythia-410m --device "$DEVICE" --no-cache)

# In order of importance; each in a fresh process (wall_s includes start-up and model loading; the
# figures file has the in-process seconds and the peak GPU memory).
step install 50 "" "" bash -c install_wheels
step gpu_tests 90 "" "" "${PYTEST[@]}" -k "not toy_run" --junitxml "$LOGS/gpu_tests.xml"
step gpu_toy_compare 45 "" "" "${PYTEST[@]}" -k "toy_run" --junitxml "$LOGS/gpu_toy_compare.xml"
step toy_default 25 "$FIGURES/toy_default.json" "$RUN_SIZE_NOTE" "$PYTHON" -m benchmarks.gpu_bench run \
  --record "$FIGURES/toy_default.json" --size "${RUN_SIZE_NOTE:-full}" toy_default -- \
  --device "$DEVICE" --no-cache "${RUN_SIZE[@]}" --out "$WORK/runs/toy"
step build_caches 30 "" "" "$PYTHON" -m benchmarks.gpu_bench caches --hf-home "$HF_HOME" "${TINY[@]}"
for dtype in bfloat16 float32; do
  step "pythia_default_$dtype" 75 "$FIGURES/pythia_default_$dtype.json" "$RUN_SIZE_NOTE" \
    "$PYTHON" -m benchmarks.gpu_bench run --record "$FIGURES/pythia_default_$dtype.json" \
    --size "${RUN_SIZE_NOTE:-full}" "pythia_default_$dtype" -- "${PYTHIA[@]}" --dtype "$dtype" \
    "${RUN_SIZE[@]}" --out "$WORK/runs/pythia-$dtype"
done
step kernels 30 "$FIGURES/kernels.json" "${TINY[*]:+dry run: tiny sizes}" "$PYTHON" -m benchmarks.gpu_bench \
  kernels --device "$DEVICE" "${TINY[@]}" --record "$FIGURES/kernels.json"
step seed_protocol 60 "$FIGURES/seed_protocol.json" "$SEED_SIZE_NOTE" "$PYTHON" -m benchmarks.gpu_bench run \
  --record "$FIGURES/seed_protocol.json" --size "$SEED_SIZE_NOTE" seed_protocol -- "${PYTHIA[@]}" \
  --protocol seed "${SEED_SIZE[@]}" --out "$WORK/runs/seed"

# Results: the failed steps' log tails first, then the summary last (the device tool returns the last
# 12,000 characters of the output).
"$PYTHON" - "$STEPS" "$LOGS" <<'EOF'
import json, sys
from pathlib import Path
for line in Path(sys.argv[1]).read_text().splitlines():
    step = json.loads(line)
    log = Path(sys.argv[2]) / f"{step['name']}.log"
    if step["exit_code"] not in (0, None) and log.is_file():
        tail = log.read_text(errors="replace").splitlines()[-25:]
        print(f"--- {step['name']}: exit {step['exit_code']}, last lines of its log")
        print("\n".join(text[:200] for text in tail))
EOF
META=$(printf '{"dry_run": %s, "check_wall_s": %d, "budget_s": %d}' \
  "$( (( DRY )) && echo true || echo false)" $(( $(date +%s) - CHECK_START )) "$BUDGET")
mkdir -p "$(dirname "$RESULTS")"
if ! "$PYTHON" -m benchmarks.gpu_bench collect --steps "$STEPS" --out "$RESULTS" --meta "$META" \
  > "$WORK/summary.txt" 2> "$LOGS/collect.log"; then
  { echo "collect failed:"; tail -n 20 "$LOGS/collect.log"; cat "$STEPS"; } > "$WORK/summary.txt"
fi
if [[ -n "$DEST" ]]; then
  [[ -f "$RESULTS" ]] && cp "$RESULTS" "$DEST/results_gpu.json"
  cp "$WORK/summary.txt" "$DEST/summary.txt"
  # One bundle (under 16 MiB): the logs, the figures and each run's small JSON files.
  (cd "$WORK" && find runs -name '*.json' -size -1024k > "$WORK/bundle.list" 2> /dev/null
   tar czf "$DEST/gpu_check_logs.tar.gz" logs figures steps.jsonl summary.txt -T "$WORK/bundle.list") \
    || echo "warning: the log bundle was not written"
fi
cat "$WORK/summary.txt"
echo "wrote $RESULTS${DEST:+ and $DEST/{results_gpu.json,steps.jsonl,summary.txt,gpu_check_logs.tar.gz}}"
