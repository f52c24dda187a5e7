#!/usr/bin/env bash
# FP8 per-tensor against vLLM 0.32.0 on CPU, opt-in (WEIGHTCHECK_VLLM_FP8=1): only the regression
# case files (the bf16 FP8 cases among adapters/regressions/vllm/, which the adapter ships with
# its expectations), because vLLM refuses FP8 for float32 models and the random profile draws
# float32 FP8 cases (docs/adapters/vllm.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash ci/adapters/install_vllm.sh
target="$(bash ci/adapters/install_vllm.sh --print-path)"
export PYTHONPATH="$target:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export VLLM_TARGET_DEVICE=cpu VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-ERROR}" HF_HUB_OFFLINE=1 WEIGHTCHECK_VLLM_FP8=1
exec python -m pytest conformance/test_regressions.py --loader=weightcheck.adapters.vllm_loader -n 2 \
  -p no:cacheprovider --weightcheck-out "${WEIGHTCHECK_OUT:-weightcheck-results/vllm-fp8}" "$@"
