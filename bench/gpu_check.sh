#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and no network (about 5 minutes). Each stage runs
# under its own time limit; a stage that fails is reported and the next one runs; results go to
# $OUT (or the folder given, or out/gpu-check): results.json, status.txt, stages.log (every stage's
# output) and the table last (table.md). Nothing it needs is
# outside the tree: the models are built on the GPU with random weights (bench/gpu_check.py).
# Usage: bash bench/gpu_check.sh [OUT]          the dry run on a CPU: TINY=1 bash bench/gpu_check.sh OUT
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-out/gpu-check}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
TINY_FLAG=${TINY:+--tiny}
: > "$OUT_DIR/status.txt"
: > "$OUT_DIR/stages.log"
rm -f "$OUT_DIR/results.json"

# stage NAME SECONDS COMMAND...: runs COMMAND (its output added to OUT/stages.log), records ok / why not.
stage() {
    local name=$1 limit=$2; shift 2
    local log="$OUT_DIR/$name.tmp.log"
    echo "== $name (at most ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
    local rc=$?
    if [ $rc -eq 0 ]; then echo "$name ok" >> "$OUT_DIR/status.txt"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "$name timed out after ${limit} s" >> "$OUT_DIR/status.txt"
    else echo "$name failed (exit $rc): $(tail -n 1 "$log" | cut -c1-160)" >> "$OUT_DIR/status.txt"
    fi
    { echo "== $name (exit $rc)"; cat "$log"; } >> "$OUT_DIR/stages.log"
    tail -n 3 "$log"
    rm -f "$log"
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
stage env 60 $PY -m bench.gpu_check env --out "$OUT_DIR" $TINY_FLAG
if [ -z "${TINY:-}" ]; then
    stage cuda-tests 120 $PY -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider
fi
stage roof 60 $PY -m bench.gpu_check roof --out "$OUT_DIR" $TINY_FLAG
stage smollm2-135m 90 $PY -m bench.gpu_check smollm2-135m --out "$OUT_DIR" $TINY_FLAG
stage llama-1b 90 $PY -m bench.gpu_check llama-1b --out "$OUT_DIR" $TINY_FLAG
stage llama-8b 150 $PY -m bench.gpu_check llama-8b --out "$OUT_DIR" $TINY_FLAG
$PY -m bench.gpu_check table --out "$OUT_DIR" $TINY_FLAG
