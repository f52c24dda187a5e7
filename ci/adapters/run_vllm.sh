#!/usr/bin/env bash
# Run the conformance suite (default dev profile, every property) against vLLM 0.32.0 on CPU at
# every placement it can hold (adapters/vllm_loader.py: tensor, pipeline and expert parallel ranks
# run in persistent rank processes of weightcheck.adapters.pool), after installing it with
# ci/adapters/install_vllm.sh (cached).  The adapter ships its known failures
# (adapters/expectations/vllm.txt) and its regression cases (adapters/regressions/vllm/); the suite
# uses them by default.  Extra arguments go to pytest (e.g. -q, --weightcheck-out=DIR).
#
#   bash ci/adapters/run_vllm.sh [extra pytest arguments]
#
# The seed is fixed (WEIGHTCHECK_SEED, default below) so that the random examples that hit the
# known failures are the same on every run: an expectation that stops failing is then a real
# change (strict xpass), never luck.  WEIGHTCHECK_SEED= (empty) draws a new seed, to explore.
#
# -n 2: each xdist worker has its own rank pool (one forkserver with vLLM imported once, worlds
# of 1-16 rank processes started on first use); two workers keep both cores busy while one
# waits for its ranks.  A world run that hangs fails its test after WEIGHTCHECK_POOL_TIMEOUT
# seconds (default here 300) naming the rank that hung; rank processes exit with their worker.
# About 6 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash ci/adapters/install_vllm.sh
target="$(bash ci/adapters/install_vllm.sh --print-path)"
seed="${WEIGHTCHECK_SEED-1}"
seed_args=()
if [ -n "$seed" ]; then
  seed_args=(--hypothesis-seed="$seed")
fi
export PYTHONPATH="$target:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export VLLM_TARGET_DEVICE=cpu VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-ERROR}" HF_HUB_OFFLINE=1
export WEIGHTCHECK_POOL_TIMEOUT="${WEIGHTCHECK_POOL_TIMEOUT:-300}"
exec python -m pytest --loader=weightcheck.adapters.vllm_loader -n "${WEIGHTCHECK_VLLM_WORKERS:-2}" \
  -p no:cacheprovider --weightcheck-out "${WEIGHTCHECK_OUT:-weightcheck-results/vllm}" \
  "${seed_args[@]}" "$@"
