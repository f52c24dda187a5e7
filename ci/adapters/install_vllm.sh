#!/usr/bin/env bash
# Lean install of vLLM 0.32.0 (CPU) for adapters/vllm_loader.py, into a cached directory OUTSIDE
# the repository: "${WEIGHTCHECK_EXTRAS:-$HOME/.cache/weightcheck-extras}/vllm" (pip --target).
#
# Run it inside the environment that already has torch==2.13.0 and weightcheck
# (`pip install torch==2.13.0 -e .`).  Nothing is installed into that environment: vllm and
# its import-time needs go to the target directory with --no-deps, pinned, so pip can neither
# replace torch nor pull in CUDA wheels (triton, torchvision, torchaudio, torchcodec are left
# out on purpose: the PyPI builds of the last three are CUDA-linked and break `import vllm.config`).
# A repeat run with everything in place returns at once; a clean machine takes about 1-2 min.
#
# Use it: PYTHONPATH="$(bash ci/adapters/install_vllm.sh --print-path):$PWD" VLLM_TARGET_DEVICE=cpu ...
# (ci/adapters/run_vllm.sh does that).
set -euo pipefail
extras="${WEIGHTCHECK_EXTRAS:-$HOME/.cache/weightcheck-extras}"
target="$extras/vllm"
stamp="$target/.weightcheck-vllm-0.32.0-3"   # bump the suffix when the pins below change
python="${PYTHON:-python}"
export VLLM_TARGET_DEVICE=cpu PIP_DISABLE_PIP_VERSION_CHECK=1

if [ "${1:-}" = "--print-path" ]; then
  echo "$target"
  exit 0
fi

torch_version="$("$python" -c 'import torch; print(torch.__version__)')"
case "$torch_version" in
  2.13.0*) ;;
  *) echo "install_vllm.sh: vllm 0.32.0 needs torch 2.13.0 in this environment, found $torch_version" >&2
     exit 1 ;;
esac

if [ -f "$stamp" ]; then
  echo "vllm 0.32.0 already installed in $target"
  exit 0
fi

# vLLM's import-time needs (see /work/shared/reference/real-loaders.md), resolved once against an
# environment holding only torch 2.13.0 + weightcheck's own dependencies, minus triton.
needs=(
  PyYAML==6.0.3 aiohappyeyeballs==2.7.1 aiohttp==3.14.5 aiosignal==1.4.0 annotated-doc==0.0.7
  annotated-types==0.8.0 anyio==4.16.0 apache-tvm-ffi==0.1.15.post2 attrs==26.1.0
  cachetools==8.0.1 cbor2==6.3.0 certifi==2026.10.18 charset-normalizer==3.5.2 click==8.5.1
  cloudpickle==3.1.2 einops==0.8.2 fastapi==0.136.3 frozenlist==1.8.0 h11==0.16.0 hf-xet==1.8.0
  httpcore2==2.16.2 httpx2==2.16.2 huggingface_hub==2.4.0 idna==3.20 jiter==0.19.0
  llguidance==1.7.6 markdown-it-py==4.3.0 mdurl==0.1.2 msgspec==0.22.0 multidict==7.2.1
  openai==3.54.0 oss-harmony==0.0.11 partial-json-parser==0.2.1.1.post7 pillow==13.0.0
  prometheus_client==0.26.0 propcache==0.5.4 psutil==7.2.2 py-cpuinfo==9.0.0 pybase64==1.5.1
  pydantic==2.14.3 pydantic_core==2.50.4 pyzmq==27.3.0 regex==2026.11.15 requests==2.34.2
  rich==15.0.0 shellingham==1.5.4 sniffio==1.3.1 starlette==1.10.0 tokenizers==0.23.3
  tqdm==4.70.1 transformers==5.19.0 truststore==0.10.5 typer==0.29.2 typing-inspection==0.4.5
  typing-extensions==4.16.0 compressed-tensors==0.17.0 loguru==0.7.3
  urllib3==2.8.0 uvloop==0.23.0 xgrammar==0.2.8 yarl==1.25.1
)

rm -rf "$target"
mkdir -p "$target"
"$python" -m pip install --quiet --no-deps --target "$target" vllm==0.32.0 "${needs[@]}"
# Never shadow the environment's torch; drop CUDA-linked companions if any slipped in.
rm -rf "$target"/torch "$target"/torch-* "$target"/torchvision* "$target"/torchaudio* \
  "$target"/torchcodec* "$target"/triton "$target"/triton-*

PYTHONPATH="$target" "$python" - <<'PY'
import torch, vllm, vllm.config  # noqa: F401  (import-time needs are all there)
import vllm.model_executor.model_loader  # noqa: F401  (fastapi -> anyio -> typing_extensions>=4.16)
import compressed_tensors.quantization  # noqa: F401  (get_quantization_config imports every method)
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert not torch.__file__.startswith(__import__("os").environ["PYTHONPATH"]), torch.__file__
print(f"vllm {vllm.__version__} with torch {torch.__version__} from {torch.__file__}")
PY
touch "$stamp"
echo "vllm 0.32.0 installed in $target"
