#!/usr/bin/env bash
# FP8 block-wise against transformers 5.23.0 on CPU, opt-in (WEIGHTCHECK_TRANSFORMERS_FP8=1): the
# regression case files only (adapters/regressions/transformers, with adapters/expectations/transformers-fp8.txt), because transformers mishandles
# the partial blocks the random profile draws in most FP8 cases (docs/adapters/transformers.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash ci/adapters/install_transformers.sh
extras="$(bash ci/adapters/install_transformers.sh --print-path)"
export PYTHONPATH="$extras:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_DEACTIVATE_ASYNC_LOAD=1 WEIGHTCHECK_TRANSFORMERS_FP8=1
exec python -m pytest conformance/test_regressions.py --loader=weightcheck.adapters.transformers_loader -n 2 \
  -p no:cacheprovider \
  -W "ignore::FutureWarning" -W "ignore::DeprecationWarning" "$@"
