"""weightcheck adapter for SGLang 0.5.23 on CPU, at one rank: SGLang's REAL model classes, its
own checkpoint reader and the models' own ``load_weights``, compared right after loading
(before ``process_weights_after_loading``).

Install with ``bash ci/adapters/install_sglang.sh`` and run with ``bash ci/adapters/run_sglang.sh``
(docs/adapters/sglang.md).  Per example:

- ``build(arch, placement)`` writes the suite's own ``config.json`` for ``arch`` to a directory
  of this process and builds the model as ``DefaultModelLoader.load_model`` does:
  ``ModelConfig(dir, dtype=arch.dtype)``, ``get_model_architecture`` (checked to be the class
  SGLang registers for the config's ``architectures``), ``_get_quantization_config`` and
  ``_initialize_model`` under ``set_default_torch_dtype`` on CPU.  SGLang's CPU engine
  (``SGLANG_USE_CPU_ENGINE=1``), the distributed environment (world size 1, gloo) and the
  published single-rank topology are set up once per process (``_Runtime``).
- ``load(model, checkpoint)`` reads ``checkpoint.path`` with SGLang's own reader,
  ``DefaultModelLoader._get_all_weights`` (its safetensors index handling and its default
  multi-threaded safetensors iterator), and hands the iterator to
  ``DefaultModelLoader.load_weights_only``, which calls the model's own ``load_weights``: exactly
  the calls of ``DefaultModelLoader.load_model``, stopping before ``postprocess_weights``.
  It returns **None**: SGLang 0.5.23 does not track what it loaded for these models (their
  default ``load_weights`` returns nothing; the opt-in ``SGLANG_ENABLE_WEIGHT_LOADER_V2`` path
  exists only for a few classes), and the adapter does not invent a tracking of its own, so the
  tracking property is reported as not supported and a missing tensor passes only if SGLang
  raises.
- ``state(model)`` is ``named_parameters()`` renamed to the canonical layout of
  docs/runtime-layout.md; values are never touched.  Parameters SGLang itself marks
  ``_skip_weight_check`` (the KV-cache scales ``attn.k_scale``/``attn.v_scale`` its
  ``BaseKVCacheMethod`` adds to every attention layer of a quantised model, defaulted to -1 and
  no checkpoint weights of the canonical layout) are left out, as SGLang's own weight checker
  leaves them out.

Only single-rank placements (tp = pp = ep = 1) are declared: SGLang reads its tp/pp/ep rank from
its process groups, which need one process per rank.  See ``features()`` for what else is and is
not declared, and why.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")

import torch  # noqa: E402

import sglang  # noqa: E402

from weightcheck import Arch, Capabilities, Checkpoint, Placement  # noqa: E402

SGLANG_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
}

# SGLang runtime name -> canonical name (docs/runtime-layout.md).  For the four declared
# families SGLang 0.5.23's names already are the canonical ones (``mlp.experts.w13_weight``,
# ``w2_weight``, GPT-2's ``transformer.*``; a tied ``lm_head`` is no separate parameter where
# SGLang ties it), so the table is empty; it is where a rename would go.
_RENAMES: tuple[tuple[re.Pattern, str], ...] = ()


def canonical_name(name: str) -> str:
    """The canonical runtime name of an SGLang parameter name."""
    for pattern, repl in _RENAMES:
        name = pattern.sub(repl, name)
    return name


def canonical_names(names: Iterable[str]) -> set[str]:
    return {canonical_name(n) for n in names}


def suite_config(arch) -> dict:
    """The suite's own ``config.json`` dict for ``arch`` (what it writes beside the checkpoint).
    The one place this adapter reaches into the suite beyond the public types."""
    from weightcheck.reference_models.families import family_spec

    return family_spec(arch.family).config(arch)


class SglangModel:
    """One built rank: SGLang's model and the ``ModelConfig`` it was built from."""

    def __init__(self, module: torch.nn.Module, model_config: Any):
        self.module = module
        self.model_config = model_config


class _Runtime:
    """Set up once per process: SGLang's imports, the distributed environment (world size 1,
    gloo), the published single-rank topology and its model-parallel groups."""

    def __init__(self) -> None:
        from sglang.srt.distributed import parallel_state
        from sglang.srt.runtime_context import (
            SpawnRanks,
            get_parallel,
            publish,
            reset_context,
        )
        from sglang.srt.server_args import ServerArgs

        # What build/load use, imported here so that the whole set-up is paid once per process
        # (importing the model registry imports every SGLang model module).
        import sglang.srt.configs.model_config  # noqa: F401
        import sglang.srt.model_loader.loader  # noqa: F401
        import sglang.srt.model_loader.utils  # noqa: F401

        self.config_root = tempfile.mkdtemp(prefix="weightcheck-sglang-configs-")
        atexit.register(shutil.rmtree, self.config_root, ignore_errors=True)
        self.config_dirs: dict[str, str] = {}

        handle, path = tempfile.mkstemp(prefix="weightcheck-sglang-dist-")
        os.close(handle)
        os.unlink(path)
        parallel_state.init_distributed_environment(
            world_size=1,
            rank=0,
            local_rank=0,
            distributed_init_method=f"file://{path}",
            backend="gloo",
        )
        # What sglang.test.test_utils.publish_build_topology does (that module itself imports
        # benchmark datasets): publish a single-rank CPU topology, keep the WORLD group.
        reset_context()
        publish(
            ServerArgs(model_path="dummy", tp_size=1, ep_size=1, pp_size=1, device="cpu"),
            role="test",
            ranks=SpawnRanks(world_rank=0),
        )
        if parallel_state._WORLD is not None:
            get_parallel().override_permanently(world_group=parallel_state._WORLD)
        parallel_state.initialize_model_parallel(backend="gloo")
        atexit.register(self._tear_down)

    @staticmethod
    def _tear_down() -> None:
        from sglang.srt.distributed import parallel_state

        try:
            parallel_state.destroy_model_parallel()
            parallel_state.destroy_distributed_environment()
        except Exception:  # noqa: BLE001  (interpreter exit: nothing left to report to)
            pass

    def config_dir(self, config: dict) -> str:
        text = json.dumps(config, sort_keys=True)
        path = self.config_dirs.get(text)
        if path is None:
            path = tempfile.mkdtemp(dir=self.config_root)
            with open(os.path.join(path, "config.json"), "w") as f:
                f.write(text)
            self.config_dirs[text] = path
        return path


def features(environ=os.environ) -> set[str]:
    """The declared features; docs/adapters/sglang.md says why each missing one is missing:

    - tensor/pipeline/expert parallel: one process per rank needed (a rank pool is being built).
    - fused_expert_checkpoint: SGLang 0.5.23's Qwen2-MoE/Qwen3-MoE ``load_weights`` know only
      per-expert tensors; the transformers-v5 3-D ``mlp.experts.gate_up_proj``/``down_proj`` are
      skipped without a word (the experts keep uninitialised memory).
    - lora: SGLang's LoRA layers allocate pinned memory at construction
      (``MergedColumnParallelLinearWithLoRA``: ``torch.tensor(..., pin_memory=True)``), which
      raises on a machine without an accelerator.
    - fp8_per_tensor: works (bf16/fp16 models), but SGLang refuses FP8 for float32 models and the
      random profile draws float32 FP8 cases, so it is opt-in: ``WEIGHTCHECK_SGLANG_FP8=1``, for
      bf16/fp16 case files (``--replay``/``--regressions``).
    - fp8_block: SGLang refuses, at construction, block sizes that do not divide every shard of
      a merged layer (the random profile's usual case), and its Llama drops every block scale.
    """
    declared = {"tied_embeddings", "attention_bias", "sharded_checkpoint"}
    if environ.get("WEIGHTCHECK_SGLANG_FP8") == "1":
        declared.add("fp8_per_tensor")
    return declared


class SglangLoader:
    name = f"sglang {sglang.__version__} (CPU engine, one rank)"
    capabilities = Capabilities(families=set(SGLANG_ARCHITECTURES), features=features())
    # Shipped with the adapter, used by default (--no-adapter-defaults leaves it out).
    expectations = Path(__file__).resolve().parent / "expectations" / "sglang.txt"

    def __init__(self) -> None:
        self._runtime: _Runtime | None = None

    @property
    def runtime(self) -> _Runtime:
        if self._runtime is None:
            self._runtime = _Runtime()
        return self._runtime

    def build(self, arch: Arch, placement: Placement) -> SglangModel:
        from sglang.srt.configs.load_config import LoadConfig
        from sglang.srt.configs.model_config import ModelConfig
        from sglang.srt.model_loader.loader import _get_quantization_config, _initialize_model
        from sglang.srt.model_loader.utils import get_model_architecture, set_default_torch_dtype

        if (placement.tp_size, placement.pp_size, placement.ep_size) != (1, 1, 1):
            raise NotImplementedError(
                "this adapter runs one rank in one process: tensor, pipeline and expert "
                "parallel are not supported"
            )
        if arch.lora is not None:
            raise NotImplementedError("this adapter does not support LoRA wrapping")
        runtime = self.runtime
        model_config = ModelConfig(runtime.config_dir(suite_config(arch)), dtype=arch.dtype)
        load_config = LoadConfig()
        _, arch_name = get_model_architecture(model_config)
        if arch_name != SGLANG_ARCHITECTURES[arch.family]:
            raise RuntimeError(f"SGLang chose {arch_name} for {arch.family}")
        quant_config = _get_quantization_config(model_config, load_config)
        with set_default_torch_dtype(model_config.dtype), torch.device("cpu"):
            module = _initialize_model(model_config, load_config, quant_config)
        return SglangModel(module, model_config)

    def load(self, model: SglangModel, checkpoint: Checkpoint) -> None:
        """SGLang's reader on ``checkpoint.path`` into the model's own ``load_weights``, as
        ``DefaultModelLoader.load_model`` does before post-processing.  Returns None: SGLang
        does not track which parameters it loaded (see the module docstring)."""
        from sglang.srt.configs.load_config import LoadConfig
        from sglang.srt.model_loader.loader import DefaultModelLoader
        from sglang.srt.model_loader.utils import set_default_torch_dtype

        # The ModelConfig the model was built from, pointing at the checkpoint directory.
        source_config = copy.copy(model.model_config)
        source_config.model_path = os.path.abspath(checkpoint.path)
        reader = DefaultModelLoader(LoadConfig())
        with set_default_torch_dtype(model.model_config.dtype), torch.no_grad():
            weights = reader._get_all_weights(source_config, model.module)
            DefaultModelLoader.load_weights_only(model.module, weights, torch.device("cpu"))
        return None

    def state(self, model: SglangModel) -> dict[str, torch.Tensor]:
        return {
            canonical_name(n): p
            for n, p in model.module.named_parameters()
            if not getattr(p, "_skip_weight_check", False)
        }


loader = SglangLoader()
