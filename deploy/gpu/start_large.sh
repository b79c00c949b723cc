#!/usr/bin/env bash
# Large worker: a 70B model in FP8 across 4 GPUs (about 70 GB of weights, the rest for KV cache).
# Tool calls: `tool_choice: "auto"` needs --enable-auto-tool-choice and the parser of the model (Llama 3.1: llama3_json).
set -euo pipefail
exec vllm serve "${MODEL_LARGE:-neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8}" \
  --served-model-name llama-3.1-70b-fp8 \
  --tensor-parallel-size 4 \
  --host 0.0.0.0 --port 8002 \
  --max-model-len 16384 \
  --gpu-memory-utilization 0.90 \
  --max-num-seqs 128 \
  --enable-prefix-caching \
  --enable-auto-tool-choice --tool-call-parser llama3_json
