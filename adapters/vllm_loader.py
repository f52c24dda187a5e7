"""weightcheck adapter for vLLM 0.32.0 on CPU: vLLM's REAL model classes and their own
``load_weights``, compared right after it (before ``process_weights_after_loading``), at every
tensor-, pipeline- and expert-parallel rank vLLM can express.

Install with ``bash ci/adapters/install_vllm.sh`` and run with ``bash ci/adapters/run_vllm.sh``
(docs/adapters/vllm.md).

vLLM reads a rank's position from its ``torch.distributed`` process groups, so every rank of a
world is a process of its own: the adapter runs vLLM in a ``weightcheck.adapters.pool.RankPool``
(persistent rank processes forked from a forkserver that imported vLLM once, gloo on
127.0.0.1).  A placement (tp, pp, ep) maps onto vLLM's rank layout ExternalDP x DP x PP x TP
with DP = ep / tp when ep > 1 (vLLM's expert group is DP x TP), i.e. a world of
``pp * tp * dp`` processes in which the placement is the rank
``(dp_rank * pp + pp_rank) * tp + tp_rank`` with ``dp_rank = ep_rank // tp``.

- ``build(arch, placement)`` runs one world run: every rank makes vLLM's model-parallel groups
  for the configuration current (groups are created collectively the first time a world sees a
  (tp, pp, dp, MoE) combination and reused afterwards), and the placement's rank writes the
  ``config.json`` the checkpoint carries (``weightcheck.hf_config(arch)``), builds
  ``ModelConfig`` -> ``ParallelConfig`` -> ``VllmConfig`` from it and constructs the class
  vLLM picks for the config's ``architectures`` under the config's dtype.  Every parameter
  ``state`` reports is then filled with NaN (``weightcheck.adapters.unwritten``: vLLM allocates
  with ``torch.empty``, and a region it never loads must read the same on every run).  It
  returns a handle to that model, which lives in its rank process.
- ``load(handle, checkpoint)`` calls the model's own ``load_weights(checkpoint.weights())`` in
  that process and returns the set vLLM returns (vLLM's own tracking), renamed to the
  canonical layout.
- ``state(handle)`` is ``named_parameters()`` renamed (values untouched, sent back as bytes).
- ``load_ranks(arch, placements, checkpoint)`` (the all-ranks hook) builds and loads every rank
  of the world in ONE world run and returns every rank's (state, loaded set).
- ``check_loaded(handle, loaded)`` is vLLM's own ``track_weights_loading`` (see below).

Single-rank examples (tp = pp = ep = 1) go to a one-rank world of the pool too: this process
then never imports vLLM (only the forkserver does), which saves more than the pipe costs
(ci/pool_benchmark.py); ``WEIGHTCHECK_VLLM_SINGLE=inprocess`` builds them in this process.

LoRA: a model whose arch asks for LoRA is wrapped by vLLM's own LoRA model manager
(``vllm.lora.model_manager.create_lora_manager`` with a ``LoRAConfig`` whose ``target_modules``
are the arch's targets), as the worker does after building the model; no engine runs.  vLLM's
wrapped layers keep the original as ``base_layer`` (``qkv_proj.base_layer.weight``).  Placements
(and archs) vLLM cannot hold are declared through ``Capabilities.placements``
(``placement_reason``).

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
import importlib.metadata
import importlib.util
import itertools
import json
import math
import os
import re
import shutil
import tempfile
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

import torch  # noqa: E402

from weightcheck.capabilities import Capabilities  # noqa: E402
from weightcheck.adapters.pool import ModelEngine  # noqa: E402
from weightcheck.adapters.unwritten import fill_unwritten  # noqa: E402

if importlib.util.find_spec("vllm") is None:
    raise ModuleNotFoundError("No module named 'vllm' (bash ci/adapters/install_vllm.sh)", name="vllm")
try:
    VLLM_VERSION = importlib.metadata.version("vllm")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
    import vllm

    VLLM_VERSION = vllm.__version__

VLLM_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "deepseek_v32": "DeepseekV32ForCausalLM",  # vLLM builds it with its DeepseekV3ForCausalLM class
}


def vllm_is_moe(arch) -> bool:
    """What vLLM's ``ModelConfig.is_moe`` says for ``arch`` (it decides whether vLLM creates an
    expert-parallel group): the suite's DeepSeek-V3.2 configs have no MoE layer
    (``first_k_dense_replace`` = all layers), but vLLM reads ``n_routed_experts`` from the HF
    config class's default and counts the model as MoE."""
    return arch.moe is not None or arch.family == "deepseek_v32"

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


def checkpoint_config(arch) -> dict:
    """The ``config.json`` dict the suite writes into the checkpoint for ``arch``
    (``weightcheck.hf_config``: optional fields left out as the arch says): vLLM's
    ``ModelConfig`` is built from exactly the config the checkpoint carries.  The one place the
    adapter asks for a config."""
    from weightcheck import hf_config

    return hf_config(arch)


# --- vLLM's rank layout ---------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where a placement sits in vLLM's world: ExternalDP x DP x PP x (PCP) x TP, with the
    expert group DP x TP (``enable_expert_parallel``)."""

    world_size: int
    tp: int
    pp: int
    dp: int
    rank: int  # this placement's rank in the world


def layout(placement) -> Layout:
    tp, pp = placement.tp_size, placement.pp_size
    dp = placement.ep_size // tp if placement.ep_size > 1 else 1
    dp_rank = placement.ep_rank // tp if placement.ep_size > 1 else 0
    return Layout(tp * pp * dp, tp, pp, dp, (dp_rank * pp + placement.pp_rank) * tp + placement.tp_rank)


def placement_reason(placement, arch=None) -> str | None:
    """None when vLLM 0.32 can hold this rank of ``arch``, else why not
    (``Capabilities.placements``)."""
    tp, ep = placement.tp_size, placement.ep_size
    if arch is not None and arch.lora is not None and "experts" in arch.lora.targets:
        return (
            "vLLM 0.32 cannot wrap MoE experts for LoRA on CPU: FusedMoEWithLoRA needs a modular "
            "MoE kernel ('Old-style modular kernel not supported.'; it suggests "
            "moe_backend='triton', which has no CPU build)"
        )
    if arch is not None and arch.moe is not None and ep == 1 and tp > arch.moe.num_experts:
        return (
            f"vLLM's Qwen MoE refuses a tp size ({tp}) larger than the number of experts "
            f"({arch.moe.num_experts}) even without expert parallel"
        )
    if tp == 3:
        return (
            "vLLM pads the vocabulary to a multiple of 64 and asserts that the tp size divides "
            "it (VocabParallelEmbedding): tp 3 fails for most vocab sizes"
        )
    if ep > 1:
        if ep % tp:
            return f"vLLM's expert group is DP x TP: ep size {ep} is not a multiple of tp size {tp}"
        if placement.ep_rank % tp != placement.tp_rank:
            return (
                f"vLLM's expert group is DP x TP (ep rank = dp rank * tp + tp rank): ep rank "
                f"{placement.ep_rank} cannot sit at tp rank {placement.tp_rank} of {tp}"
            )
        if placement.expert_placement == "round_robin":
            return (
                "vLLM 0.32 honours round_robin expert placement only for models with expert "
                "groups (n_group > 1, e.g. DeepSeek-V3); Qwen3-MoE and Qwen2-MoE fall back to "
                "linear with a warning"
            )
    return None


# --- building, loading and reading one rank (in whichever process holds it) -----------------

_GROUP_GLOBALS = ("_TP", "_ETP", "_ENGRAM_DP", "_DCP", "_PCP", "_PP", "_DP", "_EP", "_EPLB")
MAX_GROUP_SETS = 16  # per process: the (tp, pp, dp, MoE) combinations whose groups are kept


class VllmModel:
    """One built rank: vLLM's model and the config it was built under; ``processed`` once
    vLLM's ``process_weights_after_loading`` has run on it (a later load is then vLLM's
    in-place reload)."""

    def __init__(self, module: torch.nn.Module, vllm_config: Any):
        self.module = module
        self.vllm_config = vllm_config
        self.processed = False


class _Runtime:
    """What is set up once per process: the CPU bridges, the distributed environment, the
    config directories and vLLM's model-parallel groups (one set per parallel configuration)."""

    def __init__(self, rank: int = 0, world_size: int = 1, config_root: str | None = None) -> None:
        if config_root is None:
            config_root = tempfile.mkdtemp(prefix="weightcheck-vllm-configs-")
            atexit.register(shutil.rmtree, config_root, ignore_errors=True)
        os.makedirs(config_root, exist_ok=True)
        self.config_root = config_root
        self.config_dirs: dict[str, str] = {}
        self.rank, self.world_size = rank, world_size
        self.group_sets: "OrderedDict[tuple, dict]" = OrderedDict()
        self.current: tuple | None = None
        self._register_cpu_gelu_new()
        self._allow_portable_cpu_moe_kernel()
        self._init_distributed()

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

    def _init_distributed(self) -> None:
        """vLLM's world group: over the pool's gloo world in a rank process (torch.distributed
        is already initialised there), or a one-rank ``file://`` world in this process."""
        from vllm.distributed import init_distributed_environment

        method = "env://"
        if not torch.distributed.is_initialized():
            path = os.path.join(self.config_root, "dist-store")
            method = f"file://{path}"
        init_distributed_environment(
            world_size=self.world_size,
            rank=self.rank,
            local_rank=self.rank,
            distributed_init_method=method,
            backend="gloo",
        )

    def config_dir(self, config: dict) -> str:
        text = json.dumps(config, sort_keys=True)
        path = self.config_dirs.get(text)
        if path is None:
            path = tempfile.mkdtemp(dir=self.config_root)
            with open(os.path.join(path, "config.json"), "w") as f:
                f.write(text)
            self.config_dirs[text] = path
        return path

    def vllm_config(self, arch, placement) -> Any:
        from vllm.config import ModelConfig, ParallelConfig, VllmConfig

        config = checkpoint_config(arch)
        model_config = ModelConfig(
            model=self.config_dir(config),
            skip_tokenizer_init=True,
            dtype=arch.dtype,
            max_model_len=min(128, arch.max_position_embeddings),
        )
        where = layout(placement)
        parallel_config = ParallelConfig(
            tensor_parallel_size=where.tp,
            pipeline_parallel_size=where.pp,
            data_parallel_size=where.dp,
            enable_expert_parallel=placement.ep_size > 1,
            expert_placement_strategy=placement.expert_placement,
        )
        lora_config = None
        if arch.lora is not None:
            from vllm.config import LoRAConfig

            lora_config = LoRAConfig(
                max_lora_rank=min(r for r in (1, 8, 16) if r >= arch.lora.rank),
                max_loras=1,
                target_modules=[LORA_MODULES[t] for t in arch.lora.targets],
            )
        return VllmConfig(model_config=model_config, parallel_config=parallel_config, lora_config=lora_config)

    def groups_for(self, arch, placement, vllm_config=None) -> None:
        """Make vLLM's model-parallel groups those of ``placement``'s world configuration.

        vLLM's groups depend only on (tp, pp, dp) and on whether the model is MoE (the expert
        group exists only then); they are created collectively (every rank of the world calls
        this in the same order) the first time a combination is seen and kept, so a later
        model of the same combination is built under the very groups vLLM would create for
        it, without re-creating them (re-creating leaks fds and costs most of an example)."""
        from vllm.config import set_current_vllm_config
        from vllm.distributed import parallel_state as ps

        where = layout(placement)
        key = (where.tp, where.pp, where.dp, vllm_is_moe(arch))
        if key == self.current:
            return
        groups = self.group_sets.get(key)
        if groups is None:
            if vllm_config is None:
                vllm_config = self.vllm_config(arch, placement)
            for name in _GROUP_GLOBALS:
                setattr(ps, name, None)
            self.current = None
            with set_current_vllm_config(vllm_config):
                ps.initialize_model_parallel(where.tp, where.pp, 1, 1, "gloo")
            groups = self.group_sets[key] = {name: getattr(ps, name, None) for name in _GROUP_GLOBALS}
            while len(self.group_sets) > MAX_GROUP_SETS:
                _, old = self.group_sets.popitem(last=False)
                _destroy_groups(old)
        else:
            self.group_sets.move_to_end(key)
        for name, group in groups.items():
            setattr(ps, name, group)
        self.current = key

    def build(self, arch, placement) -> VllmModel:
        from vllm.config import set_current_vllm_config
        from vllm.distributed import parallel_state as ps
        from vllm.model_executor.model_loader.utils import get_model_architecture, initialize_model
        from vllm.model_executor.models import utils as model_utils
        from vllm.utils.torch_utils import set_default_torch_dtype

        reason = placement_reason(placement, arch)
        if reason is not None:
            raise NotImplementedError(reason)
        where = layout(placement)
        if (where.world_size, where.rank) != (self.world_size, self.rank):
            raise RuntimeError(
                f"placement {placement} is rank {where.rank} of a world of {where.world_size}, "
                f"but this process is rank {self.rank} of {self.world_size}"
            )
        vllm_config = self.vllm_config(arch, placement)
        if vllm_config.model_config.is_moe != vllm_is_moe(arch):
            raise RuntimeError(f"vLLM's is_moe is {vllm_config.model_config.is_moe} for {arch.family}")
        partition = ",".join(map(str, placement.layer_partition))
        default = _vllm_default_partition(arch.num_layers, placement.pp_size)
        if placement.pp_size > 1 and tuple(placement.layer_partition) != default:
            os.environ["VLLM_PP_LAYER_PARTITION"] = partition
        else:  # vLLM's own default partition (get_pp_indices), checked against the suite's
            os.environ.pop("VLLM_PP_LAYER_PARTITION", None)
        with set_current_vllm_config(vllm_config):
            self.groups_for(arch, placement, vllm_config)
            _check_ranks(ps, placement)
            model_cls, arch_name = get_model_architecture(vllm_config.model_config)
            if arch_name != VLLM_ARCHITECTURES[arch.family]:
                raise RuntimeError(f"vLLM chose {arch_name} for {arch.family}")
            # vLLM caches PP-missing layer names by id(model), never evicted: ids are reused
            model_utils._model_to_pp_missing_layer_names.clear()
            # what DefaultModelLoader.load_model -> create_model does: vLLM's initialize_model
            # (the class under its config; it also records the metadata its in-place reload needs)
            with set_default_torch_dtype(vllm_config.model_config.dtype), torch.device("cpu"), _sparse_attention_stub(arch):
                module = initialize_model(vllm_config=vllm_config, model_class=model_cls)
                # before LoRA wraps the layers: the base weights, never the adapters' stacks
                kv_cache_scales = _kv_cache_scale_names(module)
                fill_unwritten(p for n, p in module.named_parameters() if n not in kv_cache_scales)
                if vllm_config.lora_config is not None:
                    _wrap_for_lora(module, vllm_config, arch)
        return VllmModel(module, vllm_config)

    def close(self) -> None:
        from vllm.distributed import parallel_state as ps

        for name in _GROUP_GLOBALS:
            setattr(ps, name, None)
        while self.group_sets:
            _destroy_groups(self.group_sets.popitem()[1])
        self.current = None
        ps.destroy_distributed_environment()


@contextmanager
def _sparse_attention_stub(arch):
    """DeepSeek-V3.2 only, during construction only: vLLM 0.32's CPU platform refuses the
    sparse MLA attention backend (``CpuPlatform.get_attn_backend_cls``: "Sparse Attention is not
    supported on CPU."), which ``MLAAttention.__init__`` selects.  The backend is the kernel
    that runs attention over the KV cache; it creates no parameter and takes no part in
    ``load_weights`` (the MLA projections, the indexer and their weight loaders are
    ``DeepseekV2MLAAttention``'s).  While the model is constructed, a sparse request is answered
    with vLLM's CPU reference MLA backend (``CPU_MLA``); nothing else is changed, and the model
    could not run attention: it is built to be loaded."""
    if arch.family != "deepseek_v32":
        yield
        return
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.selector import _cached_get_attn_backend

    platform = type(current_platform)
    original = platform.__dict__["get_attn_backend_cls"]

    def get_attn_backend_cls(cls, selected_backend, attn_selector_config, num_heads=None):
        if attn_selector_config.use_sparse:
            return AttentionBackendEnum.CPU_MLA.get_path()
        return original.__func__(cls, selected_backend, attn_selector_config=attn_selector_config, num_heads=num_heads)

    platform.get_attn_backend_cls = classmethod(get_attn_backend_cls)
    try:
        yield
    finally:
        platform.get_attn_backend_cls = original
        _cached_get_attn_backend.cache_clear()  # no stubbed answer outlives the construction


# The suite's LoRA targets -> vLLM module names (LoRAConfig.target_modules matches suffixes, so
# "gate_up_proj" also wraps Qwen2-MoE's shared_expert.gate_up_proj, as the layout says).
LORA_MODULES = {"qkv": "qkv_proj", "o": "o_proj", "gate_up": "gate_up_proj", "down": "down_proj", "experts": "experts"}


def _wrap_for_lora(module: torch.nn.Module, vllm_config, arch) -> None:
    """vLLM's own LoRA wrapping of a built model: what the worker's LoRA manager does
    (``create_lora_manager``: ``LoRAModelManager._create_lora_modules`` replaces every target
    layer by its ``...WithLoRA`` layer, keeping the original as ``base_layer``).  The manager
    stays reachable as ``module.lora_manager``."""
    from vllm.lora.model_manager import create_lora_manager

    create_lora_manager(
        module,
        max_num_seqs=1,
        max_num_batched_tokens=16,
        vocab_size=arch.vocab_size,
        lora_config=vllm_config.lora_config,
        vllm_config=vllm_config,
        device=torch.device("cpu"),
    )


def _vllm_default_partition(num_layers: int, pp_size: int) -> tuple[int, ...]:
    """What the suite calls vLLM's default partition (strategies/placements.py): when the drawn
    partition is this one, vLLM is left to compute its own."""
    parts = [num_layers // pp_size] * pp_size
    for i in range(2, num_layers % pp_size + 2):
        parts[-i] += 1
    return tuple(parts)


def _check_ranks(ps, placement) -> None:
    """The groups say this process is the placement's rank (else the layout above is wrong)."""
    got = (ps.get_tp_group().rank_in_group, ps.get_pp_group().rank_in_group)
    want = (placement.tp_rank, placement.pp_rank)
    if placement.ep_size > 1:
        got += (ps.get_ep_group().rank_in_group, ps.get_ep_group().world_size)
        want += (placement.ep_rank, placement.ep_size)
    if got != want:
        raise RuntimeError(f"vLLM's groups put this process at {got}, the placement is {want}")


def _destroy_groups(groups: dict) -> None:
    seen = set()
    for group in groups.values():
        if group is not None and id(group) not in seen:
            seen.add(id(group))
            group.destroy()


def _is_directory(checkpoint) -> bool:
    """A checkpoint directory as the suite writes it (``weightcheck.Checkpoint``), as opposed to
    a weight stream some caller hands over (any other object with ``weights()``)."""
    from weightcheck.checkpoint import Checkpoint

    return type(checkpoint) is Checkpoint


def _vllm_disk_stream(model: VllmModel, path) -> Iterable[tuple[str, torch.Tensor]]:
    """vLLM's own reading of a checkpoint directory, as ``DefaultModelLoader.load_weights``
    does it: the EP weight filter, then ``get_all_weights`` (``*.safetensors`` filtered by
    ``model.safetensors.index.json``, a file the index names but that is missing refused,
    files in natural order, vLLM's safetensors reader).  ``get_all_weights`` reads only
    ``model`` and ``revision`` of the model config: the checkpoint's directory is given there."""
    from types import SimpleNamespace

    from vllm.config import LoadConfig
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

    reader = DefaultModelLoader(LoadConfig(use_tqdm_on_load=False))
    model_config = model.vllm_config.model_config
    reader._init_ep_weight_filter(model_config)
    reader._init_mm_encoder_only_weight_filter(model.module, model_config)
    return reader.get_all_weights(SimpleNamespace(model=str(path), revision=None), model.module)


def load_model(model: VllmModel, checkpoint) -> set[str]:
    """One load, through the entry point vLLM has for what is given:

    - a checkpoint directory: vLLM's model loading from disk, ``DefaultModelLoader``'s reader
      (``_vllm_disk_stream``) into ONE ``model.load_weights`` call, as
      ``DefaultModelLoader.load_weights`` does (its completeness check is ``check_loaded``);
    - any other checkpoint object, a weight stream handed over by a caller: vLLM's weight
      sync, one ``model.load_weights`` call per group of ``checkpoint.weight_groups()`` (vLLM's
      weight-transfer engines call ``load_weights`` once per received chunk), the loaded sets
      united.

    On a model that vLLM has processed (``process_weights_after_loading``), a load is vLLM's
    in-place reload (``reload_weights`` with checkpoint-format weights):
    ``initialize_layerwise_reload``, the load, ``finalize_layerwise_reload``."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import (
        finalize_layerwise_reload,
        initialize_layerwise_reload,
    )

    loaded: set[str] = set()
    with set_current_vllm_config(model.vllm_config), torch.no_grad():
        if model.processed:
            initialize_layerwise_reload(model.module)
        if _is_directory(checkpoint):
            loaded = set(model.module.load_weights(_vllm_disk_stream(model, checkpoint.path)))
        else:
            groups = getattr(checkpoint, "weight_groups", None)
            for group in groups() if groups is not None else [checkpoint.weights()]:
                loaded |= set(model.module.load_weights(group))
        if model.processed:
            finalize_layerwise_reload(model.module, model.vllm_config.model_config)
    return canonical_names(_lora_named(model.module, loaded))


def _lora_named(module: torch.nn.Module, loaded: set[str]) -> set[str]:
    """vLLM reports a LoRA-wrapped layer's parameters under their unwrapped names
    (``qkv_proj.weight`` for the parameter ``qkv_proj.base_layer.weight``): its own in-place
    reload compares the loaded set with the parameter names stripped of ``.base_layer.`` in the
    same way (``reload_weights``).  Those names are given back as the parameters they name."""
    wrapped = {n.replace(".base_layer.", "."): n for n, _ in module.named_parameters() if ".base_layer." in n}
    return {wrapped.get(n, n) for n in loaded}


def process_model(model: VllmModel) -> None:
    """vLLM's own post-load processing, ``model_loader.utils.process_weights_after_loading``
    (what ``DefaultModelLoader.load_model`` runs after ``load_weights``), on CPU."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.utils import process_weights_after_loading

    from vllm.model_executor.layers.fused_moe import FusedMoEMethodBase

    if not hasattr(torch.ops._C, "prepack_moe_weight") and any(
        isinstance(getattr(m, "quant_method", None), FusedMoEMethodBase) for m in model.module.modules()
    ):
        raise NotImplementedError(
            "vLLM 0.32's CPU MoE processing (CPUUnquantizedExperts.process_weights_after_loading) "
            "needs torch.ops._C.prepack_moe_weight, a kernel of vLLM's CPU build that the PyPI "
            "wheel (vllm._C built for CUDA) does not have: MoE models cannot be processed here"
        )
    with set_current_vllm_config(model.vllm_config), torch.no_grad():
        try:
            process_weights_after_loading(model.module, model.vllm_config.model_config, torch.device("cpu"))
        except AttributeError as exc:  # e.g. FP8's torch.ops._C.static_scaled_fp8_quant
            if "'_C'" not in str(exc):
                raise
            raise NotImplementedError(
                f"vLLM 0.32's CPU processing needs a kernel of vLLM's CPU build that the PyPI wheel "
                f"(vllm._C built for CUDA) does not have: {exc}"
            ) from exc
    model.processed = True


def model_state(model: VllmModel) -> dict[str, torch.Tensor]:
    kv_cache_scales = _kv_cache_scale_names(model.module)
    return {
        canonical_name(n): p
        for n, p in model.module.named_parameters()
        if n not in kv_cache_scales
    }


def check_model_loaded(model: VllmModel, loaded: set[str] | None) -> None:
    """vLLM's OWN completeness check, ``DefaultModelLoader.track_weights_loading``, called as
    ``DefaultModelLoader.load_weights`` calls it (``quantized`` iff the model config has a
    quantization method) on the real model, with ``loaded`` translated back to vLLM's names.
    Its error names vLLM parameters; the canonical names of those it names are appended (only
    ``routed_experts`` differs), nothing else is changed or decided here."""
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


# --- the rank processes ---------------------------------------------------------------------

MAX_MODELS = 8  # models a rank process keeps for live handles (the oldest go first)

# What the forkserver imports once, so that every rank process starts with vLLM imported.
PRELOAD = (
    "torch",
    "torch.distributed",
    "vllm",
    "vllm.config",
    "vllm.distributed",
    "vllm.distributed.parallel_state",
    "vllm.model_executor.model_loader",
    "vllm.model_executor.model_loader.default_loader",
    "vllm.model_executor.models.llama",
    "vllm.model_executor.models.gpt2",
    "vllm.model_executor.models.qwen2_moe",
    "vllm.model_executor.models.qwen3_moe",
    "vllm.model_executor.models.deepseek_v2",
    "vllm.model_executor.layers.fused_moe",
    "weightcheck.reference_models.families",
    "weightcheck.adapters.vllm_loader",
)


class RankEngine(ModelEngine):
    """One rank process's side of the adapter (the pool's engine, ``ModelEngine``: timings and
    models by handle)."""

    max_models = MAX_MODELS

    def __init__(self, rank: int, world_size: int, scratch: str):
        super().__init__()
        os.environ["VLLM_RPC_BASE_PATH"] = scratch  # vLLM's IPC sockets: removed with the world
        self.runtime = _Runtime(rank, world_size, os.path.join(scratch, "configs"))

    def _handle(self, request: dict) -> Any:
        op = request["op"]
        if op == "build":
            if request["active"]:
                self.keep(request["key"], self.runtime.build(request["arch"], request["placement"]))
            else:
                self.runtime.groups_for(request["arch"], request["placement"])
            return None
        if op == "load_ranks":
            if request["active"]:
                model = self.runtime.build(request["arch"], request["placement"])
                loaded = load_model(model, request["checkpoint"])
                return model_state(model), loaded, _counters(request["checkpoint"])
            self.runtime.groups_for(request["arch"], request["placement"])
            return None
        if op == "noop":
            return None
        model = self.model(request["key"])
        if op == "load":
            return load_model(model, request["checkpoint"]), _counters(request["checkpoint"])
        if op == "state":
            return model_state(model)
        if op == "check_loaded":
            return check_model_loaded(model, request["loaded"])
        if op == "process":
            return process_model(model)
        raise ValueError(f"unknown request {op!r}")

    def close(self) -> None:
        super().close()
        self.runtime.close()


class _Weights:
    """A checkpoint that cannot be sent to a rank process as it is (not picklable): its
    ``weights()`` read here, in order, and sent as data; ``path`` and ``config`` kept."""

    def __init__(self, checkpoint):
        self.path = getattr(checkpoint, "path", None)
        self.config = getattr(checkpoint, "config", None)
        self.pairs = list(checkpoint.weights())

    def weights(self):
        return iter(self.pairs)


def _counters(obj) -> dict[str, int | float]:
    """The plain numeric attributes of a checkpoint object (e.g. how much of its stream was
    consumed, which the suite's HostileCheckpoint counts)."""
    try:
        items = vars(obj).items()
    except TypeError:
        return {}
    return {k: v for k, v in items if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _sync_counters(original, copies: list[dict]) -> None:
    """A checkpoint object travels to the rank processes as a copy: its numeric attributes
    changed there (counts of what was read) are added back to the caller's object."""
    before = _counters(original)
    for key, value in before.items():
        delta = sum(c.get(key, value) - value for c in copies)
        if delta:
            setattr(original, key, value + delta)


def _portable(checkpoint):
    from weightcheck.adapters.pool import _dumps
    from weightcheck.checkpoint import Checkpoint

    if type(checkpoint) is Checkpoint:
        return checkpoint
    try:
        _dumps(checkpoint)
        return checkpoint
    except Exception:
        return _Weights(checkpoint)


class PoolModel:
    """A handle to a model living in a rank process of the pool."""

    def __init__(self, loader: "VllmLoader", world, rank: int, key: int, placement):
        self.world, self.generation, self.rank, self.key = world, world.generation, rank, key
        self.placement = placement
        weakref.finalize(self, loader._forget, world.size, self.generation, rank, key)

    def __repr__(self) -> str:
        return f"<vLLM model {self.key} at rank {self.rank} of a world of {self.world.size}>"


def features(environ=os.environ) -> set[str]:
    """The declared features.  FP8 per-tensor is opt-in (``WEIGHTCHECK_VLLM_FP8=1``): vLLM
    refuses FP8 for float32 models and the suite's random profile draws float32 FP8 cases, so
    FP8 runs on the bf16 case files only (ci/adapters/run_vllm_fp8.sh, docs/adapters/vllm.md).
    FP8 block-wise is never declared: vLLM 0.32 finds no CPU kernel without AMX at construction."""
    declared = {
        "tensor_parallel",
        "pipeline_parallel",
        "expert_parallel",
        "tied_embeddings",
        "attention_bias",
        "sharded_checkpoint",
        "fused_expert_checkpoint",
        "lora",
        # NOT "in_place_reload": vLLM's in-place reload does keep every parameter's storage
        # (checked in the rank process, tests/test_adapter_vllm.py), but ``state`` sends
        # copies across the pool's pipes, so the suite's data_ptr comparison cannot see it.
    }
    if environ.get("WEIGHTCHECK_VLLM_FP8") == "1":
        declared.add("fp8_per_tensor")
    return declared


HERE = Path(__file__).resolve().parent


class VllmLoader:
    name = f"vllm {VLLM_VERSION} (CPU)"
    capabilities = Capabilities(
        families=set(VLLM_ARCHITECTURES), features=features(), placements=placement_reason
    )
    # Shipped with the adapter and used by default (--no-adapter-defaults leaves them out): the
    # known failures of vLLM 0.32 (one-line reason each) and the findings' regression cases.
    expectations = HERE / "expectations" / "vllm.txt"
    regressions = HERE / "regressions" / "vllm"

    def __init__(self, single: str | None = None) -> None:
        self._runtime: _Runtime | None = None
        self._pool = None
        self._keys = itertools.count(1)
        self._free: dict[tuple[int, int, int], list[int]] = {}
        self.single = single or os.environ.get("WEIGHTCHECK_VLLM_SINGLE", "pool")
        if self.single not in ("inprocess", "pool"):
            raise ValueError(f"WEIGHTCHECK_VLLM_SINGLE must be inprocess or pool, not {self.single!r}")

    # -- where ranks live

    @property
    def runtime(self) -> _Runtime:
        """This process's own one-rank vLLM (single-rank examples)."""
        if self._runtime is None:
            self._runtime = _Runtime()
        return self._runtime

    @property
    def pool(self):
        if self._pool is None:
            from weightcheck.adapters.pool import RankPool

            self._pool = RankPool(
                f"{__name__}:RankEngine",
                preload=PRELOAD,
                env={
                    "VLLM_TARGET_DEVICE": "cpu",
                    "HF_HUB_OFFLINE": "1",
                    "VLLM_HOST_IP": "127.0.0.1",
                    "OMP_NUM_THREADS": "1",
                },
                threads=1,
                name="weightcheck-vllm",
            )
        return self._pool

    def _in_process(self, where: Layout) -> bool:
        return where.world_size == 1 and self.single == "inprocess"

    def _forget(self, size: int, generation: int, rank: int, key: int) -> None:
        self._free.setdefault((size, generation, rank), []).append(key)

    def _frees(self, world, rank: int) -> list[int]:
        return self._free.pop((world.size, world.generation, rank), [])

    def _requests(self, world, make) -> list[dict]:
        for stale in [k for k in self._free if k[0] == world.size and k[1] != world.generation]:
            del self._free[stale]
        return [{**make(rank), "free": self._frees(world, rank)} for rank in range(world.size)]

    def _call(self, model: PoolModel, request: dict) -> Any:
        from weightcheck.adapters.pool import RankFailed

        request["key"] = model.key
        request["free"] = self._frees(model.world, model.rank)
        try:
            return model.world.call(model.rank, request, generation=model.generation)
        except RankFailed as err:
            raise err.exception() from None

    # -- the protocol

    def build(self, arch, placement) -> VllmModel | PoolModel:
        from weightcheck.adapters.pool import RankFailed

        reason = placement_reason(placement, arch)
        if reason is not None:
            raise NotImplementedError(reason)
        where = layout(placement)
        if self._in_process(where):
            return self.runtime.build(arch, placement)
        world = self.pool.world(where.world_size)
        key = next(self._keys)

        def request(rank):
            return {"op": "build", "key": key, "arch": arch, "placement": placement, "active": rank == where.rank}

        results = world.run(self._requests(world, request))
        failed = [r for r in results if isinstance(r, RankFailed)]
        if failed:
            own = [r for r in failed if r.rank == where.rank]
            raise (own or failed)[0].exception()
        return PoolModel(self, world, where.rank, key, placement)

    def load(self, model, checkpoint) -> set[str]:
        if isinstance(model, PoolModel):
            loaded, counters = self._call(model, {"op": "load", "checkpoint": _portable(checkpoint)})
            _sync_counters(checkpoint, [counters])
            return loaded
        return load_model(model, checkpoint)

    def state(self, model) -> dict[str, torch.Tensor]:
        if isinstance(model, PoolModel):
            return self._call(model, {"op": "state"})
        return model_state(model)

    def check_loaded(self, model, loaded: set[str] | None) -> None:
        if isinstance(model, PoolModel):
            return self._call(model, {"op": "check_loaded", "loaded": loaded})
        return check_model_loaded(model, loaded)

    def process_weights_after_loading(self, model) -> None:
        """vLLM's ``process_weights_after_loading`` on the rank's model; a later ``load`` is
        then vLLM's in-place layerwise reload."""
        if isinstance(model, PoolModel):
            return self._call(model, {"op": "process"})
        return process_model(model)

    def load_ranks(self, arch, placements, checkpoint) -> list:
        """Build and load every given rank of one world in one world run: each rank's
        ``(state, loaded)``, or the exception it raised, in the order given."""
        from weightcheck.adapters.pool import RankFailed

        placements = list(placements)
        out: list[Any] = [None] * len(placements)
        at_rank: dict[int, int] = {}
        sizes = set()
        for i, placement in enumerate(placements):
            reason = placement_reason(placement, arch)
            if reason is not None:
                out[i] = NotImplementedError(reason)
                continue
            where = layout(placement)
            sizes.add(where.world_size)
            at_rank[where.rank] = i
        if not at_rank:
            return out
        if len(sizes) != 1:
            raise ValueError(f"the placements are ranks of worlds of different sizes {sorted(sizes)}")
        (size,) = sizes
        if size == 1 and self.single == "inprocess":
            for i in at_rank.values():
                try:
                    model = self.runtime.build(arch, placements[i])
                    loaded = load_model(model, checkpoint)
                    out[i] = (model_state(model), loaded)
                except Exception as exc:
                    out[i] = exc
            return out
        world = self.pool.world(size)
        first = placements[next(iter(at_rank.values()))]
        original, checkpoint = checkpoint, _portable(checkpoint)

        def request(rank):
            i = at_rank.get(rank)
            return {
                "op": "load_ranks",
                "arch": arch,
                "placement": first if i is None else placements[i],
                "active": i is not None,
                "checkpoint": checkpoint,
            }

        results = world.run(self._requests(world, request))
        counters = []
        for rank, i in at_rank.items():
            result = results[rank]
            if isinstance(result, RankFailed):
                out[i] = result.exception()
            else:
                out[i] = result[:2]
                counters.append(result[2])
        _sync_counters(original, counters)
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


loader = VllmLoader()
