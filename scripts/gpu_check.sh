#!/usr/bin/env bash
# One command for a GPU machine (CUDA, no internet): first `ggro bench` on a randomly initialised ~1B
# Llama-shaped policy and RM in bf16, then the decoder's tests on CUDA in fp32 and in bf16.
#
#   OUT=gpu-out bash scripts/gpu_check.sh [TOKENIZER_DIR]
#
# TOKENIZER_DIR holds the embedded policy's tokenizer files (tokenizer.json, tokenizer_config.json); by
# default the cached embedded policy is used. Everything lands in $OUT: the CUDA test logs, the bench JSON
# and docs/benchmarks.md with the GPU section merged in. Each stage has its own time limit so that one
# slow stage still leaves the others' results.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
TOKENIZER=${1:-}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_TOKENS=${BENCH_TOKENS:-32}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
} 2>&1 | tee "$OUT/device.txt"

mkdir -p "$OUT/docs" && cp docs/benchmarks.md "$OUT/docs/benchmarks.md"
timeout "${BENCH_TIMEOUT:-360}" "$PY" -m ggro.cli bench --synthetic-1b ${TOKENIZER:+--tokenizer "$TOKENIZER"} --device cuda \
  --dtype bfloat16 --runs "$BENCH_RUNS" --prompts 8 --max-new-tokens "$BENCH_TOKENS" --json \
  --methods ${BENCH_METHODS:-greedy ggro ggro-batch ggro-parallel ggro-fast ggro-fast-batch} \
  --out "$OUT/docs/benchmarks.md" 2>&1 | tee "$OUT/bench-cuda.txt"

for dtype in float32 bfloat16; do
  GGRO_TEST_DEVICE=cuda GGRO_TEST_DTYPE=$dtype timeout "${TEST_TIMEOUT:-120}" "$PY" -m pytest -q -p no:cacheprovider \
    -m "not slow" tests/test_decoder.py tests/test_baseline.py tests/test_rewards.py 2>&1 | tail -n 40 | tee "$OUT/tests-cuda-$dtype.txt"
done
