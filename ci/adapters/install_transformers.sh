#!/usr/bin/env bash
# Install transformers 5.23.0 and PEFT 0.21.2 (CPU) for adapters/transformers_loader.py into a
# cached directory OUTSIDE the repository:
# "${WEIGHTCHECK_EXTRAS:-$HOME/.cache/weightcheck-extras}/transformers" (pip --target).
#
# Run it inside the environment that already has torch==2.13.0 and weightcheck
# (`pip install torch==2.13.0 -e .`).  Nothing is installed into that environment: the packages
# go to the target directory with --no-deps, pinned, so pip can neither replace torch nor pull in
# a CUDA build.  The pins are what `pip install --dry-run transformers==5.23.0 peft==0.21.2`
# resolved on top of torch 2.13.0 + weightcheck's dependencies.
# A repeat run with everything in place returns at once; a clean machine takes about 20 s.
#
# Use it: PYTHONPATH="$(bash ci/adapters/install_transformers.sh --print-path):$PWD" ...
# (ci/adapters/run_transformers.sh does that).
set -euo pipefail
extras="${WEIGHTCHECK_EXTRAS:-$HOME/.cache/weightcheck-extras}"
target="$extras/transformers"
stamp="$target/.weightcheck-transformers-5.23.0-peft-0.21.2-1"   # bump when the pins change
python="${PYTHON:-python}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ "${1:-}" = "--print-path" ]; then
  echo "$target"
  exit 0
fi

if [ -f "$stamp" ]; then
  echo "transformers 5.23.0 and peft 0.21.2 already installed in $target"
  exit 0
fi

needs=(
  transformers==5.23.0 peft==0.21.2 accelerate==1.15.0 huggingface_hub==2.4.0
  tokenizers==0.23.3 tqdm==4.70.1 psutil==7.2.2 typer==0.29.2 annotated-doc==0.0.7 click==8.5.1
  hf-xet==1.8.0 httpx2==2.16.2 httpcore2==2.16.2 rich==15.0.0 shellingham==1.5.4 anyio==4.16.0
  typing_extensions==4.16.0 idna==3.20 markdown-it-py==4.3.0 truststore==0.10.5 h11==0.16.0
  mdurl==0.1.2 safetensors==0.8.0 regex==2026.5.9 PyYAML==6.0.3 packaging==26.2
)
# numpy and filelock are not listed: weightcheck and torch already bring them.

rm -rf "$target"
mkdir -p "$target"
"$python" -m pip install --quiet --no-deps --target "$target" "${needs[@]}"
# Never shadow the environment's torch.
rm -rf "$target"/torch "$target"/torch-*

PYTHONPATH="$target" "$python" - <<'PY'
import os, torch, transformers, peft
assert not torch.__file__.startswith(os.environ["PYTHONPATH"]), torch.__file__
print(f"transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}")
PY
touch "$stamp"
echo "transformers 5.23.0 and peft 0.21.2 installed in $target"
