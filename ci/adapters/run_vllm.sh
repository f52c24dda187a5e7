#!/usr/bin/env bash
# Run the conformance suite (default dev profile) against vLLM 0.32.0 on CPU
# (adapters/vllm_loader.py), after installing it with ci/adapters/install_vllm.sh (cached).
# Extra arguments go to pytest (e.g. --hypothesis-seed=N, --weightcheck-out=DIR).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash ci/adapters/install_vllm.sh
target="$(bash ci/adapters/install_vllm.sh --print-path)"
export PYTHONPATH="$target:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export VLLM_TARGET_DEVICE=cpu VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-ERROR}"
exec python -m pytest --loader=weightcheck.adapters.vllm_loader -n 2 \
  --expect-fail adapters/expectations/vllm.txt --regressions fixtures/regressions/vllm \
  -p no:cacheprovider "$@"
