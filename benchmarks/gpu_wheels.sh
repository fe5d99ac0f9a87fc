#!/usr/bin/env bash
# Fill wheels/ (ignored by git) with what benchmarks/gpu_check.sh installs on a GPU machine without a
# network: TransformerLens and the pure-Python requirements such a machine was seen to lack, plus pytest,
# at the versions pinned in constraints.txt, as wheels for Python 3.12. Run it here, where pip reaches
# the package index; then carry wheels/ with the GPU call: device tool `run` with carry ["wheels"] and
# command "bash benchmarks/gpu_check.sh" (its header says what comes back under $OUT).
#
#     benchmarks/gpu_wheels.sh            # the pure-Python set (a few MB)
#     benchmarks/gpu_wheels.sh --binary   # also pandas, pyarrow, xxhash (manylinux, ~60 MB) for a machine lacking them
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
# gguf: a main dependency of mi_bridge (packaged GGUF models), pure Python, imported only when needed.
PURE="transformer-lens beartype better-abc fancy-einsum typeguard datasets dill multiprocess pytest iniconfig pluggy gguf"
BINARY="pandas pyarrow xxhash"

pinned() {  # name==version from constraints.txt (one clear line if a name is not pinned there)
  local line
  line=$(grep -i "^$1==" constraints.txt) || { echo "error: $1 is not pinned in constraints.txt" >&2; exit 2; }
  echo "$line"
}

specs=()
for name in $PURE; do specs+=("$(pinned "$name")"); done
mkdir -p wheels
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation py --abi none --platform any -d wheels "${specs[@]}" \
  || "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d wheels "${specs[@]}"
if [[ "${1:-}" == "--binary" ]]; then
  binary=()
  for name in $BINARY; do binary+=("$(pinned "$name")"); done
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 -d wheels "${binary[@]}"
fi
ls -l wheels
echo "next: device run, carry [\"wheels\"], command \"bash benchmarks/gpu_check.sh\", timeout_s 600"
