#!/usr/bin/env bash
# Run the conformance suite (default dev profile) against SGLang 0.5.23's CPU engine at one rank
# (adapters/sglang_loader.py), after installing it with ci/adapters/install_sglang.sh (cached).
# Extra arguments go to pytest (e.g. -q, --hypothesis-seed=N, --weightcheck-out=DIR).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash ci/adapters/install_sglang.sh
target="$(bash ci/adapters/install_sglang.sh --print-path)"
export PYTHONPATH="$target:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# SGLang's own CPU engine (without it SGLang finds no platform); never a hub look-up.
export SGLANG_USE_CPU_ENGINE=1 HF_HUB_OFFLINE=1
exec python -m pytest --loader=weightcheck.adapters.sglang_loader -n 2 -p no:cacheprovider "$@"
