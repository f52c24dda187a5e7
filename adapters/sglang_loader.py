"""weightcheck adapter for SGLang 0.5.23 on CPU, at tensor parallel 1, 2 and 4 and pipeline
parallel 2 (at tp 1 and 2): SGLang's REAL
model classes, its own checkpoint reader and the models' own ``load_weights``, compared right
after loading (before ``process_weights_after_loading``).

Install with ``bash ci/adapters/install_sglang.sh`` and run with ``bash ci/adapters/run_sglang.sh``
(docs/adapters/sglang.md).  Per example:

- ``build(arch, placement)`` writes the suite's own ``config.json`` for ``arch`` to a directory
  of this process and builds the model as ``DefaultModelLoader.load_model`` does:
  ``ModelConfig(dir, dtype=arch.dtype)``, ``get_model_architecture`` (checked to be the class
  SGLang registers for the config's ``architectures``), ``_get_quantization_config`` and
  ``_initialize_model`` under ``set_default_torch_dtype`` on CPU, under SGLang's runtime context
  of the placement's (tp, pp, ep).  SGLang's CPU engine (``SGLANG_USE_CPU_ENGINE=1``) and the
  distributed environment (gloo) are set up once per process, the topology and groups once per
  (tp, pp, ep) combination (``_Runtime``).  At pp > 1 the layer split is SGLang's own default when
  the placement's partition is that one, else the partition named in SGLang's
  ``SGLANG_PP_LAYER_PARTITION``.
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
  docs/runtime-layout.md.  Its parameters are filled with NaN once, right after construction
  (``weightcheck.adapters.unwritten``: SGLang allocates with ``torch.empty``, and a region it
  never loads must read the same on every run); values are never touched afterwards.  Parameters SGLang itself marks
  ``_skip_weight_check`` (the KV-cache scales ``attn.k_scale``/``attn.v_scale`` its
  ``BaseKVCacheMethod`` adds to every attention layer of a quantised model, defaulted to -1 and
  no checkpoint weights of the canonical layout) are left out, as SGLang's own weight checker
  leaves them out.

Tensor and pipeline parallel: SGLang reads its tp and pp ranks from its process groups, which
need one process per rank.  tp = pp = 1 runs in this process; larger placements run in
persistent rank processes of ``weightcheck.adapters.pool`` (``RankEngine``: one world per
tp * pp, the placement at SGLang's world rank ``pp_rank * tp + tp_rank``; a world holds every
(tp, pp, ep) of its size, SGLang's groups made per combination in a world run and swapped in, as the
vLLM adapter does; the model kept in the rank process behind a ``PoolModel`` handle; ``build``
and the all-ranks hook ``load_ranks`` are world runs).  ``placement_reason`` declares what it
cannot hold: expert parallel other than ep = tp (linear, experts a multiple of ep), tp * pp
above 4 (worlds of at most 4 rank processes: not attempted), GPT-2 at pp > 1 (no pipeline parallel in SGLang's GPT-2), tp 3, tp above a MoE's expert count.
See ``features()`` for what else is and is not declared, and why.
"""

from __future__ import annotations

import atexit
import copy
import itertools
import json
import os
import re
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterable

os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")

import torch  # noqa: E402

import sglang  # noqa: E402

from weightcheck import Arch, Capabilities, Checkpoint, Placement  # noqa: E402
from weightcheck.adapters.pool import ModelEngine  # noqa: E402
from weightcheck.adapters.unwritten import fill_unwritten  # noqa: E402

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
    """The ``config.json`` dict the checkpoint carries for ``arch`` (``weightcheck.hf_config``:
    optional fields left out as the arch says): SGLang's ``ModelConfig`` reads exactly that."""
    from weightcheck import hf_config

    return hf_config(arch)


class SglangModel:
    """One built rank: SGLang's model and the ``ModelConfig`` it was built from."""

    def __init__(self, module: torch.nn.Module, model_config: Any, context: Any = None):
        self.module = module
        self.model_config = model_config
        self.context = context  # SGLang's runtime context (topology, groups) it was built under

    def scope(self):
        """SGLang's runtime context of the model's (tp, pp, ep), for loading and reading it."""
        from contextlib import nullcontext

        from sglang.srt.runtime_context import use_context

        return nullcontext() if self.context is None else use_context(self.context)


# SGLang's model-parallel group globals (parallel_state), one set per (tp, pp, ep) kept per process.
# ``_SELF_PP`` (singleton groups over the whole world) is made once and shared by every set.
_GROUP_GLOBALS = (
    "_TP", "_ATTN_TP", "_SHARED_EXPERTS_TP", "_ATTN_CP", "_DCP", "_PDMUX_PREFILL_TP_GROUP",
    "_MOE_DP", "_MOE_EP", "_MOE_TP", "_PP",
)


class _Runtime:
    """Set up once per process: SGLang's imports, the distributed environment (gloo) and, per
    (tp, pp, ep) combination, a runtime context of SGLang's with that topology published and its
    model-parallel groups.  In this process: a world of one rank (tp = pp = 1).  In a rank
    process of the pool (``RankEngine``), where torch.distributed is already set up over the
    pool's gloo world: rank ``rank`` of a world of ``world_size`` = tp * pp, laid out as SGLang
    lays out its world (``rank = tp_size * pp_rank + tp_rank``).  A world of one size can hold
    several combinations (4 = tp 4, pp 4 or tp 2 x pp 2, with or without ep): ``groups_for`` creates a combination's
    groups collectively (in a world run, every rank) the first time the world sees it, keeps
    them, and swaps them in afterwards, as the vLLM adapter's ``_Runtime.groups_for`` does."""

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        from sglang.srt.distributed import parallel_state

        # What build/load use, imported here so that the whole set-up is paid once per process
        # (importing the model registry imports every SGLang model module).
        import sglang.srt.configs.model_config  # noqa: F401
        import sglang.srt.model_loader.loader  # noqa: F401
        import sglang.srt.model_loader.utils  # noqa: F401

        self.config_root = tempfile.mkdtemp(prefix="weightcheck-sglang-configs-")
        atexit.register(shutil.rmtree, self.config_root, ignore_errors=True)
        self.config_dirs: dict[str, str] = {}

        self.rank, self.world_size = rank, world_size
        self.group_sets: dict[tuple[int, int, int], dict] = {}
        self.contexts: dict[tuple[int, int, int], Any] = {}
        self.current: tuple[int, int, int] | None = None
        if torch.distributed.is_initialized():  # a rank process of the pool
            method = "env://"
        else:
            handle, path = tempfile.mkstemp(prefix="weightcheck-sglang-dist-")
            os.close(handle)
            os.unlink(path)
            method = f"file://{path}"
        parallel_state.init_distributed_environment(
            world_size=world_size,
            rank=rank,
            local_rank=rank,
            distributed_init_method=method,
            backend="gloo",
        )
        atexit.register(self._tear_down)
        if world_size == 1:  # the only combination of a one-rank world, made here
            self.groups_for(1, 1)

    def groups_for(self, tp_size: int, pp_size: int, ep_size: int = 1) -> Any:
        """Make SGLang's groups and published topology those of (tp, pp, ep); returns the
        runtime context (``sglang.srt.runtime_context``) to build and load under.  Creating a
        combination's groups is collective: every rank of the world calls this, in the same
        order (build and load_ranks are world runs).  SGLang's expert-parallel group lies
        inside the tp group (``moe_ep_size`` divides ``tp_size``; at ep = tp it is the tp
        group itself), so ep adds no ranks to the world."""
        from sglang.srt.distributed import parallel_state as ps
        from sglang.srt.runtime_context import SpawnRanks, create_context, use_context
        from sglang.srt.server_args import ServerArgs

        key = (tp_size, pp_size, ep_size)
        if tp_size * pp_size != self.world_size:
            raise RuntimeError(f"tp {tp_size} x pp {pp_size} is no layout of a world of {self.world_size}")
        if key == self.current:
            return self.contexts[key]
        groups = self.group_sets.get(key)
        if groups is None:
            # What sglang.test.test_utils.publish_build_topology does (that module itself imports
            # benchmark datasets), into a context of this combination's own instead of the
            # process-wide one: the CPU topology, this rank's place in it, the WORLD group.
            context = create_context(
                ServerArgs(model_path="dummy", tp_size=tp_size, ep_size=ep_size, pp_size=pp_size, device="cpu"),
                role="test",
                ranks=SpawnRanks(world_rank=self.rank),
            )
            if ps._WORLD is not None:
                context.parallel.override_permanently(world_group=ps._WORLD)
            for name in _GROUP_GLOBALS:
                setattr(ps, name, None)
            self.current = None
            with use_context(context):
                ps.initialize_model_parallel(backend="gloo")
            groups = self.group_sets[key] = {name: getattr(ps, name, None) for name in _GROUP_GLOBALS}
            self.contexts[key] = context
        for name, group in groups.items():
            setattr(ps, name, group)
        self.current = key
        return self.contexts[key]

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


def world_rank(placement) -> int:
    """The placement's rank in SGLang's world of tp * pp ranks: TP groups are contiguous
    blocks, PP groups strided by tp (``runtime_context.derive_spawn_ranks``)."""
    return placement.pp_rank * placement.tp_size + placement.tp_rank


def sglang_default_partition(num_layers: int, pp_size: int) -> tuple[int, ...]:
    """SGLang's own split (``distributed.utils.get_pp_indices`` without
    ``SGLANG_PP_LAYER_PARTITION``): the LAST ``num_layers % pp_size`` ranks get one layer more
    (vLLM gives them to the ranks before the last)."""
    base, extra = divmod(num_layers, pp_size)
    return tuple(base + (rank >= pp_size - extra) for rank in range(pp_size))


def features(environ=os.environ) -> set[str]:
    """The declared features; docs/adapters/sglang.md says why each missing one is missing:

    - tensor_parallel: declared; tp > 1 ranks run in rank processes of weightcheck.adapters.pool
      (``RankEngine``), tp 3 and tp above a MoE's expert count excluded (``placement_reason``).
    - pipeline_parallel: declared for pp 2-4 at tp 1, pp 2 at tp 2 (worlds of at most 4
      ranks), any partition; not GPT-2 (SGLang's GPT-2 has no pipeline parallel).
    - expert_parallel: declared where SGLang's rule meets the suite's layout: SGLang's expert
      group lies inside the tp group (``moe_tp_size = tp_size // moe_ep_size``), and the
      suite's layout holds each local expert whole (moe tp 1), so ep = tp, the ep rank being
      the tp rank; linear placement only (SGLang's default expert location; round robin is no
      choice of its standard MoE).
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
    declared = {
        "tensor_parallel", "pipeline_parallel", "expert_parallel", "tied_embeddings", "attention_bias",
        "sharded_checkpoint",
    }
    if environ.get("WEIGHTCHECK_SGLANG_FP8") == "1":
        declared.add("fp8_per_tensor")
    return declared


MAX_WORLD = 4  # ranks of a world: tp 1/2/4 at pp 1, pp 2-4 at tp 1, pp 2 at tp 2


def placement_reason(placement, arch=None) -> str | None:
    """None when this adapter can hold this rank of ``arch`` in SGLang, else why not
    (``Capabilities.placements``).  Tensor and pipeline parallel: one pool world per tp * pp,
    whose groups are made per (tp, pp, ep) combination."""
    tp, pp, ep = placement.tp_size, placement.pp_size, placement.ep_size
    if ep > 1:
        if ep != tp:
            return (
                f"SGLang's expert group lies inside the tp group (moe tp = tp / ep); only ep = tp "
                f"holds each local expert whole, as the suite's layout does (ep {ep}, tp {tp})"
            )
        if placement.ep_rank != placement.tp_rank:
            return (
                f"SGLang's expert group at ep = tp is the tp group: ep rank {placement.ep_rank} "
                f"cannot sit at tp rank {placement.tp_rank}"
            )
        if placement.expert_placement != "linear":
            return "SGLang's standard MoE places experts linearly (no round robin)"
        if arch is not None and arch.moe is not None and arch.moe.num_experts % ep:
            return (
                f"SGLang's FusedMoE splits the experts evenly or not at all: {arch.moe.num_experts} "
                f"experts over ep {ep} fail a bare assert (_num_global_routed % ep_size == 0)"
            )
    if tp * pp > MAX_WORLD:
        return (
            f"this adapter runs SGLang in worlds of at most {MAX_WORLD} rank processes "
            f"(tp {tp} x pp {pp} not attempted)"
        )
    if pp > 1 and arch is not None and arch.family == "gpt2":
        return (
            "SGLang's GPT2LMHeadModel has no pipeline parallel: it builds every layer, the "
            "embeddings and lm_head on every pp rank"
        )
    if arch is not None and arch.moe is not None and tp > arch.moe.num_experts:
        return (
            f"SGLang's FusedMoE refuses a tp size ({tp}) larger than the number of "
            f"experts ({arch.moe.num_experts}) (\"Tensor parallel size ... is greater than the "
            "number of experts\")"
        )
    if tp == 3:
        return (
            "SGLang pads the vocabulary to a multiple of 64 and asserts that the tp size divides "
            "it (VocabParallelEmbedding): tp 3 fails for most vocab sizes"
        )
    return None


def build_model(runtime: _Runtime, arch: Arch, placement: Placement) -> SglangModel:
    """What ``DefaultModelLoader.load_model`` does before reading weights, on CPU, in the
    process whose runtime holds the placement's rank."""
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_loader.loader import _get_quantization_config, _initialize_model
    from sglang.srt.model_loader.utils import get_model_architecture, set_default_torch_dtype

    if arch.lora is not None:
        raise NotImplementedError("this adapter does not support LoRA wrapping")
    from sglang.srt.runtime_context import get_parallel, use_context

    reason = placement_reason(placement, arch)
    if reason is not None:
        raise NotImplementedError(reason)
    if (placement.tp_size * placement.pp_size, world_rank(placement)) != (runtime.world_size, runtime.rank):
        raise RuntimeError(
            f"placement {placement} is rank {world_rank(placement)} of a world of "
            f"{placement.tp_size * placement.pp_size}, but this process is rank {runtime.rank} "
            f"of {runtime.world_size}"
        )
    context = runtime.groups_for(placement.tp_size, placement.pp_size, placement.ep_size)
    # SGLang's layer split: its own default (get_pp_indices) when the placement's partition is
    # that one, else the partition named in SGLANG_PP_LAYER_PARTITION (SGLang's own setting).
    partition = tuple(placement.layer_partition)
    if placement.pp_size > 1 and partition != sglang_default_partition(arch.num_layers, placement.pp_size):
        os.environ["SGLANG_PP_LAYER_PARTITION"] = ",".join(map(str, partition))
    else:
        os.environ.pop("SGLANG_PP_LAYER_PARTITION", None)
    with use_context(context):
        parallel = get_parallel()  # the groups SGLang's layers read, in this context
        got = (
            parallel.tp_group.rank_in_group,
            parallel.tp_group.world_size,
            parallel.pp_group.rank_in_group,
            parallel.pp_group.world_size,
            parallel.moe_ep_group.rank_in_group,
            parallel.moe_ep_group.world_size,
        )
        want = (placement.tp_rank, placement.tp_size, placement.pp_rank, placement.pp_size,
                placement.ep_rank, placement.ep_size)
        if got != want:
            raise RuntimeError(f"SGLang's groups put this process at (tp rank, tp, pp rank, pp, "
                               f"ep rank, ep) {got}, the placement is {want}")
        model_config = ModelConfig(runtime.config_dir(suite_config(arch)), dtype=arch.dtype)
        load_config = LoadConfig()
        _, arch_name = get_model_architecture(model_config)
        if arch_name != SGLANG_ARCHITECTURES[arch.family]:
            raise RuntimeError(f"SGLang chose {arch_name} for {arch.family}")
        quant_config = _get_quantization_config(model_config, load_config)
        with set_default_torch_dtype(model_config.dtype), torch.device("cpu"):
            module = _initialize_model(model_config, load_config, quant_config)
        fill_unwritten(p for _, p in module.named_parameters() if not getattr(p, "_skip_weight_check", False))
    layers = getattr(getattr(module, "model", None), "start_layer", None), getattr(
        getattr(module, "model", None), "end_layer", None
    )
    if placement.pp_size > 1 and layers != (placement.layers.start, placement.layers.stop):
        raise RuntimeError(f"SGLang built layers {layers}, the placement holds {placement.layers}")
    return SglangModel(module, model_config, context)


def load_model(model: SglangModel, path: str) -> None:
    """SGLang's reader on the checkpoint directory ``path`` into the model's own
    ``load_weights``, as ``DefaultModelLoader.load_model`` does before post-processing.  Returns
    None: SGLang does not track which parameters it loaded (see the module docstring)."""
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.model_loader.loader import DefaultModelLoader
    from sglang.srt.model_loader.utils import set_default_torch_dtype

    # The ModelConfig the model was built from, pointing at the checkpoint directory.
    source_config = copy.copy(model.model_config)
    source_config.model_path = os.path.abspath(path)
    reader = DefaultModelLoader(LoadConfig())
    with model.scope(), set_default_torch_dtype(model.model_config.dtype), torch.no_grad():
        weights = reader._get_all_weights(source_config, model.module)
        DefaultModelLoader.load_weights_only(model.module, weights, torch.device("cpu"))
    return None


def model_state(model: SglangModel) -> dict[str, torch.Tensor]:
    with model.scope():
        return {
            canonical_name(n): p
            for n, p in model.module.named_parameters()
            if not getattr(p, "_skip_weight_check", False)
        }


# --- ranks of tensor-parallel worlds: processes of weightcheck.adapters.pool --------------------

MAX_MODELS = 8  # models a rank process keeps for live handles (the oldest go first)

# What the forkserver imports once, so that every rank process starts with SGLang imported.
PRELOAD = (
    "torch",
    "torch.distributed",
    "sglang",
    "sglang.srt.configs.model_config",
    "sglang.srt.distributed.parallel_state",
    "sglang.srt.model_loader.loader",
    "sglang.srt.model_loader.utils",
    "sglang.srt.models.llama",
    "sglang.srt.models.gpt2",
    "sglang.srt.models.qwen2_moe",
    "sglang.srt.models.qwen3_moe",
    "weightcheck.reference_models.families",
    "weightcheck.adapters.sglang_loader",
)


class RankEngine(ModelEngine):
    """One rank process's side of the adapter (the pool's engine, ``ModelEngine``: timings and
    models by handle)."""

    max_models = MAX_MODELS

    def __init__(self, rank: int, world_size: int, scratch: str):
        super().__init__()
        self.runtime = _Runtime(rank, world_size)

    def _handle(self, request: dict) -> Any:
        op = request["op"]
        if op == "noop":
            return None
        if op in ("build", "load_ranks") and not request["active"]:
            # a rank that only takes part in making the groups of another rank's (tp, pp, ep)
            placement = request["placement"]
            self.runtime.groups_for(placement.tp_size, placement.pp_size, placement.ep_size)
            return None
        if op == "build":
            self.keep(request["key"], build_model(self.runtime, request["arch"], request["placement"]))
            return None
        if op == "load_ranks":
            model = build_model(self.runtime, request["arch"], request["placement"])
            load_model(model, request["path"])
            return model_state(model), None
        model = self.model(request["key"])
        if op == "load":
            return load_model(model, request["path"])
        if op == "state":
            return model_state(model)
        raise ValueError(f"unknown request {op!r}")


class PoolModel:
    """A handle to a model living in a rank process of the pool."""

    def __init__(self, loader: "SglangLoader", world, rank: int, key: int):
        self.world, self.generation, self.rank, self.key = world, world.generation, rank, key
        weakref.finalize(self, loader._forget, world.size, self.generation, rank, key)

    def __repr__(self) -> str:
        return f"<SGLang model {self.key} at rank {self.rank} of a world of {self.world.size}>"


HERE = Path(__file__).resolve().parent


class SglangLoader:
    name = f"sglang {sglang.__version__} (CPU engine)"
    capabilities = Capabilities(
        families=set(SGLANG_ARCHITECTURES), features=features(), placements=placement_reason
    )
    # Shipped with the adapter and used by default (--no-adapter-defaults leaves them out): the
    # known failures of SGLang 0.5.23 (one-line reason each) and the findings' regression cases.
    expectations = HERE / "expectations" / "sglang.txt"
    regressions = HERE / "regressions" / "sglang"

    def __init__(self) -> None:
        self._runtime: _Runtime | None = None
        self._pool = None
        self._keys = itertools.count(1)
        self._free: dict[tuple[int, int, int], list[int]] = {}

    @property
    def runtime(self) -> _Runtime:
        """This process's own one-rank SGLang (tp = 1 examples)."""
        if self._runtime is None:
            self._runtime = _Runtime()
        return self._runtime

    @property
    def pool(self):
        """Rank processes for tp * pp > 1: one world per tp * pp (weightcheck.adapters.pool)."""
        if self._pool is None:
            from weightcheck.adapters.pool import RankPool

            self._pool = RankPool(
                f"{__name__}:RankEngine",
                preload=PRELOAD,
                env={"SGLANG_USE_CPU_ENGINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
                threads=1,
                name="weightcheck-sglang",
            )
        return self._pool

    def _forget(self, size: int, generation: int, rank: int, key: int) -> None:
        self._free.setdefault((size, generation, rank), []).append(key)

    def _frees(self, world, rank: int) -> list[int]:
        for stale in [k for k in self._free if k[0] == world.size and k[1] != world.generation]:
            del self._free[stale]
        return self._free.pop((world.size, world.generation, rank), [])

    def _requests(self, world, make) -> list[dict]:
        for stale in [k for k in self._free if k[0] == world.size and k[1] != world.generation]:
            del self._free[stale]
        return [{**make(rank), "free": self._free.pop((world.size, world.generation, rank), [])}
                for rank in range(world.size)]

    def _call(self, model: PoolModel, request: dict) -> Any:
        from weightcheck.adapters.pool import RankFailed

        request["key"] = model.key
        request["free"] = self._frees(model.world, model.rank)
        try:
            return model.world.call(model.rank, request, generation=model.generation)
        except RankFailed as err:
            raise err.exception() from None

    # -- the protocol

    def build(self, arch: Arch, placement: Placement) -> SglangModel | PoolModel:
        reason = placement_reason(placement, arch)
        if reason is not None:
            raise NotImplementedError(reason)
        size, rank = placement.tp_size * placement.pp_size, world_rank(placement)
        if size == 1:
            return build_model(self.runtime, arch, placement)
        from weightcheck.adapters.pool import RankFailed

        # A world run: every rank makes (or swaps in) the groups of this (tp, pp, ep), which is
        # collective the first time; the placement's rank builds.  The world starts on first
        # use: the handle takes the generation it built in.
        world = self.pool.world(size)
        key = next(self._keys)

        def request(r):
            return {"op": "build", "key": key, "arch": arch, "placement": placement, "active": r == rank}

        results = world.run(self._requests(world, request))
        failed = [r for r in results if isinstance(r, RankFailed)]
        if failed:
            own = [r for r in failed if r.rank == rank]
            raise (own or failed)[0].exception()
        return PoolModel(self, world, rank, key)

    def load(self, model: SglangModel | PoolModel, checkpoint: Checkpoint) -> None:
        """SGLang reads ``checkpoint.path`` itself (in the rank's process); returns None."""
        if isinstance(model, PoolModel):
            return self._call(model, {"op": "load", "path": os.path.abspath(checkpoint.path)})
        return load_model(model, checkpoint.path)

    def state(self, model: SglangModel | PoolModel) -> dict[str, torch.Tensor]:
        if isinstance(model, PoolModel):
            return self._call(model, {"op": "state"})
        return model_state(model)

    def load_ranks(self, arch: Arch, placements, checkpoint: Checkpoint) -> list:
        """Build and load every given rank (tp x pp ranks of one world) in one world run: each
        rank's ``(state, None)``, or the exception it raised, in the order given."""
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
            sizes.add(placement.tp_size * placement.pp_size)
            at_rank[world_rank(placement)] = i
        if not at_rank:
            return out
        if len(sizes) != 1:
            raise ValueError(f"the placements are ranks of worlds of different sizes {sorted(sizes)}")
        (size,) = sizes
        path = os.path.abspath(checkpoint.path)
        if size == 1:
            for i in at_rank.values():
                try:
                    model = build_model(self.runtime, arch, placements[i])
                    load_model(model, path)
                    out[i] = (model_state(model), None)
                except Exception as exc:  # noqa: BLE001  (each rank's exception in its place)
                    out[i] = exc
            return out
        world = self.pool.world(size)
        first = placements[next(iter(at_rank.values()))]

        def request(rank):
            i = at_rank.get(rank)
            return {"op": "load_ranks", "arch": arch, "placement": first if i is None else placements[i],
                    "active": i is not None, "path": path}

        results = world.run(self._requests(world, request))
        for rank, i in at_rank.items():
            result = results[rank]
            out[i] = result.exception() if isinstance(result, RankFailed) else tuple(result)
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


loader = SglangLoader()
