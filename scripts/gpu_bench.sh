#!/usr/bin/env bash
# The evaluation's GPU timing, one command under 8 minutes: `ggro bench` on a randomly initialised ~1B
# Llama-shaped policy and RM in bf16 — greedy generate vs GGRO one prompt at a time (batch 1), on the 8
# prompts as one batch, with parallel refinement, and the fast mode (parallel + early exit) one at a time and
# batched, medians of 3 runs (BENCH_METHODS picks others, e.g. add `reference release-structure`).
#
#   OUT=gpu-out bash scripts/gpu_bench.sh [TOKENIZER_DIR]
#
# Prints the table and writes $OUT/docs/benchmarks.md (docs/benchmarks.md with the GPU section merged in,
# naming the card) and $OUT/device.txt. scripts/gpu_check.sh runs the same bench plus the CUDA tests.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT/docs"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
TOKENIZER=${1:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/device.txt"
cp docs/benchmarks.md "$OUT/docs/benchmarks.md"
# 16 new tokens keep three runs of all four methods inside the limit (a 24-token run took ~120 s per run on
# an H200); the limit leaves a minute for loading and start-up.
timeout "${BENCH_TIMEOUT:-420}" "$PY" -m ggro.cli bench --synthetic-1b ${TOKENIZER:+--tokenizer "$TOKENIZER"} \
  --device cuda --dtype bfloat16 --runs "${BENCH_RUNS:-3}" --prompts 8 --max-new-tokens "${BENCH_TOKENS:-16}" \
  --methods ${BENCH_METHODS:-greedy ggro ggro-batch ggro-parallel ggro-fast ggro-fast-batch} \
  --json --out "$OUT/docs/benchmarks.md" 2>&1 | tee "$OUT/bench-cuda.txt"
