#!/usr/bin/env bash
# Run the conformance suite (default dev profile) against vLLM 0.32.0 on CPU at every placement it
# can hold (adapters/vllm_loader.py: tensor, pipeline and expert parallel ranks run in persistent
# rank processes of weightcheck.adapters.pool), after installing it with
# ci/adapters/install_vllm.sh (cached).  Extra arguments go to pytest (e.g. -q,
# --hypothesis-seed=N, --weightcheck-out=DIR).
#
# -n 2: each xdist worker has its own rank pool (one forkserver with vLLM imported once, worlds
# of 1-16 rank processes started on first use); two workers keep both cores busy while one
# waits for its ranks.  A world run that hangs fails its test after WEIGHTCHECK_POOL_TIMEOUT
# seconds (default here 300) naming the rank that hung; rank processes exit with their worker.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash ci/adapters/install_vllm.sh
target="$(bash ci/adapters/install_vllm.sh --print-path)"
export PYTHONPATH="$target:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export VLLM_TARGET_DEVICE=cpu VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-ERROR}" HF_HUB_OFFLINE=1
export WEIGHTCHECK_POOL_TIMEOUT="${WEIGHTCHECK_POOL_TIMEOUT:-300}"
exec python -m pytest --loader=weightcheck.adapters.vllm_loader -n "${WEIGHTCHECK_VLLM_WORKERS:-2}" \
  --expect-fail adapters/expectations/vllm.txt --regressions fixtures/regressions/vllm \
  -p no:cacheprovider "$@"
