#!/usr/bin/env bash
# Lean install of SGLang 0.5.23 (its CPU engine, one rank) for adapters/sglang_loader.py, into a
# cached directory OUTSIDE the repository: "${WEIGHTCHECK_EXTRAS:-$HOME/.cache/weightcheck-extras}/sglang"
# (pip --target).
#
# Run it inside the environment that already has torch==2.13.0 and weightcheck
# (`pip install torch==2.13.0 -e .`).  Nothing is installed into that environment: sglang and
# exactly its import-time needs (found by importing sglang.srt.models.{llama,gpt2,qwen3_moe,
# qwen2_moe,deepseek_v2} and sglang.srt.model_loader.loader with SGLANG_USE_CPU_ENGINE=1) go to
# the target directory with --no-deps, every version pinned, so pip can neither replace torch
# (sglang 0.5.23 itself asks for torch 2.14.1) nor pull in CUDA wheels.  triton 3.8.0 is kept:
# sglang.srt.utils.common imports it at module level (it imports fine without a GPU).
#
# Two packages SGLang imports at module level have no CPU build on the registry (their wheels
# are CUDA-linked): sgl_kernel (imported by the CPU engine) and torchvision (imported for
# multimodal preprocessing, and by transformers once it is present).  This script WRITES an
# import-time stand-in for each into the target directory: every attribute and submodule exists,
# and calling any of them raises RuntimeError.  Nothing of either is on the path that constructs
# models or loads weights; if that ever changes, the run fails loudly instead of computing.
#
# A repeat run with everything in place returns at once (stamp file); a clean install takes
# about 1 min and 1.4 GB (triton alone is 0.9 GB).
#
# Use it: PYTHONPATH="$(bash ci/adapters/install_sglang.sh --print-path):$PWD" SGLANG_USE_CPU_ENGINE=1 ...
# (ci/adapters/run_sglang.sh does that).
set -euo pipefail
extras="${WEIGHTCHECK_EXTRAS:-$HOME/.cache/weightcheck-extras}"
target="$extras/sglang"
stamp="$target/.weightcheck-sglang-0.5.23-1"   # bump the suffix when the pins or stand-ins change
python="${PYTHON:-python}"
export SGLANG_USE_CPU_ENGINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

if [ "${1:-}" = "--print-path" ]; then
  echo "$target"
  exit 0
fi

torch_version="$("$python" -c 'import torch; print(torch.__version__)')"
case "$torch_version" in
  2.13.0*) ;;
  *) echo "install_sglang.sh: this install needs torch 2.13.0 in this environment (pip must never replace it), found $torch_version" >&2
     exit 1 ;;
esac

if [ -f "$stamp" ]; then
  echo "sglang 0.5.23 already installed in $target"
  exit 0
fi

# SGLang's import-time needs, found by trial against an environment holding only torch 2.13.0 +
# weightcheck's own dependencies (numpy, safetensors, filelock, fsspec, jinja2, packaging,
# typing-extensions 4.16 come from there).  sglang's own pins are kept where it has them
# (transformers, tokenizers, compressed-tensors, openai, sentencepiece, apache-tvm-ffi).
needs=(
  aiohappyeyeballs==2.7.1 aiohttp==3.14.5 aiosignal==1.4.0 annotated-types==0.8.0 anyio==4.16.0
  apache-tvm-ffi==0.1.11 attrs==26.1.0 certifi==2026.10.19.post1 charset-normalizer==3.5.3
  compressed-tensors==0.18.0 dill==0.4.1 distro==1.9.0 einops==0.8.2 frozenlist==1.8.0
  gguf==0.19.0 h11==0.16.0 httpcore2==2.17.0 httpx==0.29.0 httpx2==2.17.0
  huggingface_hub==2.4.0 idna==3.20 ipython==9.18.1 loguru==0.7.3 msgspec==0.23.0
  multidict==7.2.1 openai==2.8.0 orjson==3.13.0 partial-json-parser==0.2.1.1.post7
  pillow==13.0.0 propcache==0.5.4 psutil==7.2.2 pybase64==1.5.1 pydantic==2.14.4
  pydantic_core==2.50.5 PyYAML==6.0.4 pyzmq==27.3.0 regex==2026.12.2 requests==2.34.2
  sentencepiece==0.2.1 sniffio==1.3.1 starlette==1.10.0 tokenizers==0.23.2 tqdm==4.70.1
  traitlets==5.16.1 transformers==5.19.0 triton==3.8.0 truststore==0.10.5
  typing-inspection==0.4.5 urllib3==2.8.0 yarl==1.25.1
)

rm -rf "$target"
mkdir -p "$target"
"$python" -m pip install --quiet --no-deps --target "$target" sglang==0.5.23 "${needs[@]}"
# Never shadow the environment's torch; drop CUDA-linked companions if any slipped in (triton
# stays: it is imported at module level and works without a GPU).
rm -rf "$target"/torch "$target"/torch-* "$target"/torchvision* "$target"/torchaudio* \
  "$target"/torchcodec* "$target"/nvidia* "$target"/cuda* "$target"/sgl_kernel* \
  "$target"/sglang_kernel* "$target"/flashinfer*

# The import-time stand-ins (see the header).  One source, written as each package's __init__.
standin_source="$(cat <<'STANDIN'
"""Import-time stand-in written by weightcheck's ci/adapters/install_sglang.sh: NOT the real package.

The real package has no CPU build on the registry (its wheels are CUDA-linked), but SGLang
imports it at module level.  Every attribute, at any depth, and every submodule exists; calling
or instantiating any of them raises RuntimeError, so nothing of it can run unnoticed."""

import importlib.abc
import importlib.machinery
import sys
import types

_ROOT = __name__.split(".")[0]
__version__ = "0+weightcheck.stand.in"
__weightcheck_stand_in__ = True


class _StandInMeta(type):
    def __getattr__(cls, attr):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return _stand_in(f"{cls.__qualname__}.{attr}")

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(
            f"{cls.__qualname__} was called, but {_ROOT} is weightcheck's import-time stand-in "
            f"(no CPU build on the registry): nothing of it may run"
        )


def _stand_in(qualname):
    name = qualname.rsplit(".", 1)[-1]
    return _StandInMeta(name, (), {"__qualname__": qualname, "__module__": _ROOT})


def _module_getattr(module_name):
    def __getattr__(attr):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return _stand_in(f"{module_name}.{attr}")

    return __getattr__


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    root = _ROOT

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(self.root + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name, __doc__)
        module.__path__ = []
        module.__getattr__ = _module_getattr(spec.name)
        module.__weightcheck_stand_in__ = True
        return module

    def exec_module(self, module):
        pass


if not any(isinstance(f, _Finder) and f.root == _ROOT for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
__getattr__ = _module_getattr(_ROOT)
STANDIN
)"
for package in sgl_kernel torchvision; do
  mkdir -p "$target/$package"
  printf '%s\n' "$standin_source" > "$target/$package/__init__.py"
done

PYTHONPATH="$target" "$python" - <<'PY'
import os
import torch
import sglang
import sglang.srt.model_loader.loader  # noqa: F401
import sglang.srt.models.deepseek_v2  # noqa: F401
import sglang.srt.models.gpt2  # noqa: F401
import sglang.srt.models.llama  # noqa: F401
import sglang.srt.models.qwen2_moe  # noqa: F401
import sglang.srt.models.qwen3_moe  # noqa: F401
import sgl_kernel, torchvision  # noqa: E401
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert not torch.__file__.startswith(os.environ["PYTHONPATH"]), torch.__file__
assert sgl_kernel.__weightcheck_stand_in__ and torchvision.__weightcheck_stand_in__
print(f"sglang {sglang.__version__} with torch {torch.__version__} from {torch.__file__}")
PY
touch "$stamp"
echo "sglang 0.5.23 installed in $target"
