#!/usr/bin/env bash
# Run the conformance suite (default dev profile, every property) against SGLang 0.5.23's CPU
# engine at every placement the adapter declares (adapters/sglang_loader.py: tensor parallel 1 in
# the test process; tp 2 and 4, pp 2 and tp 2 x pp 2 in persistent rank processes of
# weightcheck.adapters.pool; not tp 3, not expert parallel, not GPT-2 at pp > 1), after installing
# it with ci/adapters/install_sglang.sh (cached).  The adapter ships its known failures
# (adapters/expectations/sglang.txt) and its regression cases (adapters/regressions/sglang/); the
# suite uses them by default.  Extra arguments go to pytest (e.g. -q, --weightcheck-out=DIR).
#
#   bash ci/adapters/run_sglang.sh [extra pytest arguments]
#
# The seed is fixed (WEIGHTCHECK_SEED, default below) so that the random examples that hit the
# known failures are the same on every run: an expectation that stops failing is then a real
# change (strict xpass), never luck.  WEIGHTCHECK_SEED= (empty) draws a new seed, to explore.
#
# -n 2: each xdist worker has its own rank pool (a forkserver with SGLang imported once, a world of
# 2 and of 4 rank processes started on first use, about 20 s each).  A world run that hangs fails
# its test after WEIGHTCHECK_POOL_TIMEOUT seconds (default here 300) naming the rank that hung.
# About 4-5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash ci/adapters/install_sglang.sh
target="$(bash ci/adapters/install_sglang.sh --print-path)"
seed="${WEIGHTCHECK_SEED-1}"
seed_args=()
if [ -n "$seed" ]; then
  seed_args=(--hypothesis-seed="$seed")
fi
export PYTHONPATH="$target:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# SGLang's own CPU engine (without it SGLang finds no platform); never a hub look-up.
export SGLANG_USE_CPU_ENGINE=1 HF_HUB_OFFLINE=1
export WEIGHTCHECK_POOL_TIMEOUT="${WEIGHTCHECK_POOL_TIMEOUT:-300}"
exec python -m pytest --loader=weightcheck.adapters.sglang_loader -n "${WEIGHTCHECK_SGLANG_WORKERS:-2}" \
  -p no:cacheprovider --weightcheck-out "${WEIGHTCHECK_OUT:-weightcheck-results/sglang}" \
  "${seed_args[@]}" "$@"
