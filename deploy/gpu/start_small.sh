#!/usr/bin/env bash
# Small worker: an AWQ 4-bit 8B model on one GPU, sharing it with nothing else.
# Weights come from your model store (set MODEL_SMALL to a local path or a hub name your machine can reach).
# Tool calls: `tool_choice: "auto"` needs --enable-auto-tool-choice and the parser of the model (Llama 3.1: llama3_json).
set -euo pipefail
exec vllm serve "${MODEL_SMALL:-hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4}" \
  --served-model-name llama-3.1-8b-awq \
  --quantization awq_marlin \
  --host 0.0.0.0 --port 8001 \
  --max-model-len 8192 \
  --gpu-memory-utilization 0.90 \
  --max-num-seqs 256 \
  --enable-prefix-caching \
  --enable-auto-tool-choice --tool-call-parser llama3_json
