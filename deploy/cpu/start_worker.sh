#!/usr/bin/env bash
# Start one vLLM CPU worker serving a tiny local model; execs, so the caller's PID is the server's.
#   deploy/cpu/start_worker.sh MODEL_DIR SERVED_NAME PORT [EXTRA VLLM ARGS...]
# Env: VLLM_PYTHON (the vLLM venv's python), TRIAGE_RUN_DIR (scratch for caches and sockets), MAX_MODEL_LEN (512),
#      VLLM_CPU_OMP_THREADS_BIND (default 0: one core per server is bound by the caller if it wishes).
set -euo pipefail
model_dir=$1 served=$2 port=$3
shift 3
run_dir=${TRIAGE_RUN_DIR:-${TMPDIR:-/tmp}/llm-triage-run}/$served-$port
mkdir -p "$run_dir/tmp"
export VLLM_TARGET_DEVICE=cpu
export VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-0}
export VLLM_CACHE_ROOT=$run_dir/vllm-cache TORCHINDUCTOR_CACHE_DIR=$run_dir/inductor TMPDIR=$run_dir/tmp
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
exec "${VLLM_PYTHON:?set VLLM_PYTHON to the vLLM venv python}" -m vllm.entrypoints.openai.api_server \
  --model "$model_dir" --served-model-name "$served" --port "$port" --host 127.0.0.1 \
  --dtype float32 --max-model-len "${MAX_MODEL_LEN:-512}" --kv-cache-memory-bytes 134217728 --max-num-seqs 16 \
  --enforce-eager "$@"  # stats stay on: /metrics (prefix-cache hits, queue depth) is what operators watch
