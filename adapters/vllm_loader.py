"""weightcheck adapter for vLLM 0.32.0 on CPU: vLLM's REAL model classes and their own
``load_weights``, compared right after it (before ``process_weights_after_loading``).

Install with ``bash ci/adapters/install_vllm.sh`` and run with ``bash ci/adapters/run_vllm.sh``
(docs/adapters/vllm.md).  Per example:

- ``build(arch, placement)`` writes the suite's own ``config.json`` for ``arch``
  (``family_spec(arch.family).config(arch)``, the dict the suite writes next to the checkpoint)
  to a directory of this process, builds ``ModelConfig`` -> ``VllmConfig`` from it, re-creates
  vLLM's model-parallel groups for that config (the distributed environment itself is set up
  once per process: world size 1, gloo) and constructs the class vLLM picks for the config's
  ``architectures`` (``LlamaForCausalLM``, ``GPT2LMHeadModel``, ``Qwen3MoeForCausalLM``,
  ``Qwen2MoeForCausalLM``) under the config's dtype.
- ``load(model, checkpoint)`` calls the model's own ``load_weights(checkpoint.weights())`` and
  returns the set vLLM returns (vLLM's own tracking), renamed to the canonical layout.
- ``state(model)`` is ``named_parameters()`` renamed to the canonical layout; values untouched.

Only single-rank placements are supported: vLLM reads its tp/pp/ep rank from its process
groups, which need one process per rank, so tensor, pipeline and expert parallel are declared
unsupported (never generated).  LoRA (vLLM wraps layers only inside its LoRA model manager,
which needs a running engine) is unsupported too.

Two things of the standard (CUDA) wheel are bridged on CPU, neither on the loading path:
- ``torch.ops._C.gelu_new`` (GPT-2's activation, looked up when the layer is constructed) is
  absent because ``vllm._C`` is CUDA-built: a pure-PyTorch CPU kernel with the formula of
  ``NewGELU.forward_native`` is registered if, and only if, the op is missing.
- vLLM's CPU MoE kernels refuse hidden or intermediate sizes not divisible by 32 at
  construction ("No Unquantized MoE backend supports the deployment configuration"); the
  kernel is only used by forward and ``process_weights_after_loading``, so when vLLM's own
  selection finds none, the portable ``CPUUnquantizedExperts`` is named instead.  Weight
  creation and ``weight_loader`` are the layer's, unchanged.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import shutil
import tempfile
from typing import Any, Iterable

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

import torch  # noqa: E402

import vllm  # noqa: E402

from weightcheck.capabilities import Capabilities  # noqa: E402

VLLM_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
}

# vLLM runtime name -> canonical name (docs/runtime-layout.md).  0.32 keeps the routed experts
# of a FusedMoE layer in a ``routed_experts`` submodule.
_RENAMES = ((re.compile(r"\.experts\.routed_experts\."), ".experts."),)


def canonical_name(name: str) -> str:
    """The canonical runtime name of a vLLM parameter name."""
    for pattern, repl in _RENAMES:
        name = pattern.sub(repl, name)
    return name


def canonical_names(names: Iterable[str]) -> set[str]:
    return {canonical_name(n) for n in names}


def _kv_cache_scale_names(module: torch.nn.Module) -> set[str]:
    """Parameters of modules whose quant method is vLLM's ``BaseKVCacheMethod``: the attention
    layers' KV-cache quantisation scales (``attn.q_scale``/``k_scale``/``v_scale``/
    ``prob_scale``) that vLLM adds to every attention layer of a quantised model.  They are no
    checkpoint weights of the canonical layout (vLLM fills them with defaults when a checkpoint
    has none, and its own completeness check exempts them), so ``state`` leaves them out."""
    from vllm.model_executor.layers.quantization.kv_cache import BaseKVCacheMethod

    names = set()
    for prefix, sub in module.named_modules():
        if isinstance(getattr(sub, "quant_method", None), BaseKVCacheMethod):
            names.update(f"{prefix}.{n}" if prefix else n for n, _ in sub.named_parameters())
    return names


class VllmModel:
    """One built rank: vLLM's model and the config it was built under."""

    def __init__(self, module: torch.nn.Module, vllm_config: Any):
        self.module = module
        self.vllm_config = vllm_config


class _Runtime:
    """What is set up once per process: imports, the CPU bridges, the distributed environment."""

    def __init__(self) -> None:
        self.initialised = False
        self.config_root = tempfile.mkdtemp(prefix="weightcheck-vllm-configs-")
        atexit.register(shutil.rmtree, self.config_root, ignore_errors=True)
        self.config_dirs: dict[str, str] = {}
        self._register_cpu_gelu_new()
        self._allow_portable_cpu_moe_kernel()

    @staticmethod
    def _register_cpu_gelu_new() -> None:
        if hasattr(torch.ops._C, "gelu_new"):
            return
        lib = torch.library.Library("_C", "FRAGMENT")
        lib.define("gelu_new(Tensor(a!) out, Tensor x) -> ()")

        def gelu_new(out: torch.Tensor, x: torch.Tensor) -> None:
            c = math.sqrt(2.0 / math.pi)
            out.copy_(0.5 * x * (1.0 + torch.tanh(c * (x + 0.044715 * torch.pow(x, 3.0)))))

        lib.impl("gelu_new", gelu_new, "CPU")
        _Runtime._library = lib  # keep the registration alive

    @staticmethod
    def _allow_portable_cpu_moe_kernel() -> None:
        from vllm.model_executor.layers.fused_moe import unquantized_fused_moe_method as method
        from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts
        from vllm.model_executor.layers.fused_moe.oracle.unquantized import UnquantizedMoeBackend

        select = method.select_unquantized_moe_backend
        if getattr(select, "_weightcheck", False):
            return

        def select_or_portable(*args, **kwargs):
            try:
                return select(*args, **kwargs)
            except NotImplementedError:
                return UnquantizedMoeBackend.CPU, CPUUnquantizedExperts

        select_or_portable._weightcheck = True
        method.select_unquantized_moe_backend = select_or_portable

    def config_dir(self, config: dict) -> str:
        text = json.dumps(config, sort_keys=True)
        path = self.config_dirs.get(text)
        if path is None:
            path = tempfile.mkdtemp(dir=self.config_root)
            with open(os.path.join(path, "config.json"), "w") as f:
                f.write(text)
            self.config_dirs[text] = path
        return path

    def groups_for(self, vllm_config: Any) -> None:
        """vLLM's groups for a single rank; MoE groups exist only if ``vllm_config`` is MoE."""
        from vllm.distributed import (
            ensure_model_parallel_initialized,
            init_distributed_environment,
        )
        from vllm.distributed.parallel_state import destroy_model_parallel

        if not self.initialised:
            handle, path = tempfile.mkstemp(prefix="weightcheck-vllm-dist-")
            os.close(handle)
            os.unlink(path)
            init_distributed_environment(
                world_size=1,
                rank=0,
                local_rank=0,
                distributed_init_method=f"file://{path}",
                backend="gloo",
            )
            self.initialised = True
        destroy_model_parallel()
        ensure_model_parallel_initialized(1, 1)


def features(environ=os.environ) -> set[str]:
    """The declared features.  FP8 per-tensor is opt-in (``WEIGHTCHECK_VLLM_FP8=1``): vLLM
    refuses FP8 for float32 models and the suite's random profile draws float32 FP8 cases, so
    FP8 runs on the bf16 case files only (ci/adapters/run_vllm_fp8.sh, docs/adapters/vllm.md).
    FP8 block-wise is never declared: vLLM 0.32 finds no CPU kernel without AMX at construction."""
    declared = {"tied_embeddings", "attention_bias", "sharded_checkpoint", "fused_expert_checkpoint"}
    if environ.get("WEIGHTCHECK_VLLM_FP8") == "1":
        declared.add("fp8_per_tensor")
    return declared


class VllmLoader:
    name = f"vllm {vllm.__version__} (CPU)"
    capabilities = Capabilities(families=set(VLLM_ARCHITECTURES), features=features())

    def __init__(self) -> None:
        self._runtime: _Runtime | None = None

    @property
    def runtime(self) -> _Runtime:
        if self._runtime is None:
            self._runtime = _Runtime()
        return self._runtime

    def build(self, arch, placement) -> VllmModel:
        from weightcheck.reference_models.families import family_spec
        from vllm.config import ModelConfig, VllmConfig, set_current_vllm_config
        from vllm.model_executor.model_loader.utils import get_model_architecture
        from vllm.utils.torch_utils import set_default_torch_dtype

        if (placement.tp_size, placement.pp_size, placement.ep_size) != (1, 1, 1):
            raise NotImplementedError(
                "this adapter runs one rank in one process: tensor, pipeline and expert "
                "parallel are not supported"
            )
        if arch.lora is not None:
            raise NotImplementedError("this adapter does not support LoRA wrapping")
        runtime = self.runtime
        config = family_spec(arch.family).config(arch)
        model_config = ModelConfig(
            model=runtime.config_dir(config),
            skip_tokenizer_init=True,
            dtype=arch.dtype,
            max_model_len=min(128, arch.max_position_embeddings),
        )
        vllm_config = VllmConfig(model_config=model_config)
        with set_current_vllm_config(vllm_config):
            runtime.groups_for(vllm_config)
            model_cls, arch_name = get_model_architecture(model_config)
            if arch_name != VLLM_ARCHITECTURES[arch.family]:
                raise RuntimeError(f"vLLM chose {arch_name} for {arch.family}")
            with set_default_torch_dtype(model_config.dtype), torch.device("cpu"):
                module = model_cls(vllm_config=vllm_config)
        return VllmModel(module, vllm_config)

    def load(self, model: VllmModel, checkpoint) -> set[str]:
        from vllm.config import set_current_vllm_config

        with set_current_vllm_config(model.vllm_config), torch.no_grad():
            loaded = model.module.load_weights(checkpoint.weights())
        return canonical_names(loaded)

    def state(self, model: VllmModel) -> dict[str, torch.Tensor]:
        kv_cache_scales = _kv_cache_scale_names(model.module)
        return {
            canonical_name(n): p
            for n, p in model.module.named_parameters()
            if n not in kv_cache_scales
        }

    def check_loaded(self, model: VllmModel, loaded: set[str] | None) -> None:
        """vLLM's OWN completeness check, ``DefaultModelLoader.track_weights_loading``, called
        as ``DefaultModelLoader.load_weights`` calls it (``quantized`` iff the model config has
        a quantization method) on the real model, with ``loaded`` translated back to vLLM's
        names.  Its error names vLLM parameters; the canonical names of those it names are
        appended (only ``routed_experts`` differs), nothing else is changed or decided here."""
        from vllm.config import LoadConfig, set_current_vllm_config
        from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

        runtime_names = [n for n, _ in model.module.named_parameters()]
        to_vllm = {canonical_name(n): n for n in runtime_names}
        vllm_loaded = None if loaded is None else {to_vllm.get(n, n) for n in loaded}
        checker = DefaultModelLoader(LoadConfig())
        quantized = model.vllm_config.model_config.quantization is not None
        try:
            with set_current_vllm_config(model.vllm_config):
                checker.track_weights_loading(model.module, vllm_loaded, quantized=quantized)
        except ValueError as exc:
            message = str(exc)
            renamed = sorted(
                canonical_name(n)
                for n in runtime_names
                if canonical_name(n) != n and re.search(re.escape(n) + r"(?![\w.])", message)
            )
            if not renamed:
                raise
            raise ValueError(f"{message} (canonical names: {renamed})") from exc


loader = VllmLoader()
