"""Deliberately buggy loaders ("mutants"), each reproducing one realistic loading bug.

Every property of the suite must fail against at least one of these; the reference loader
they are derived from must pass everything.  Each mutant changes one decision of the
reference loader, the way the real bug did, and names where that bug was seen.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from reference_models.reference_loader.gpt2 import CONV1D_MODULES, GPT2LMHeadModel
from reference_models.reference_loader.layers import QKVParallelLinear, VocabParallelEmbedding
from reference_models.reference_loader.llama import LlamaForCausalLM
from reference_models.reference_loader.loader import MODELS, ReferenceLoader


@dataclass(frozen=True)
class Mutant:
    name: str
    bug: str
    origin: str
    caught_by: str  # the property expected to catch it
    families: tuple[str, ...]
    loader: object
    message: str  # a fragment the failure message must contain


class MutantLoader(ReferenceLoader):
    """The reference loader with other model classes and/or a patch applied after building."""

    def __init__(self, name, models=None, patch: Callable[[nn.Module], None] | None = None):
        self.name = f"mutant {name}"
        self.models = {**MODELS, **(models or {})}
        self.patch = patch

    def build(self, arch, placement):
        model = self.models[arch.family](arch, placement)
        if self.patch:
            self.patch(model)
        return model


def _patch_modules(kind: type, method: str, replacement: Callable) -> Callable[[nn.Module], None]:
    """Rebind ``method`` on every ``kind`` instance of one model (never on the class)."""

    def patch(model: nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, kind):
                setattr(module, method, types.MethodType(replacement, module))

    return patch


# --- seed PR #38074 (JAIS / GPT-2 Conv1D) ------------------------------------------------------


class GPT2NoTranspose(GPT2LMHeadModel):
    def needs_transpose(self, name):
        return False


class GPT2MaskedBiasNotSkipped(GPT2LMHeadModel):
    def is_skipped(self, name):
        # Skips ``attn.bias`` but forgets ``attn.masked_bias``.
        parts = name.split(".")
        if parts[-2:] == ["attn", "bias"]:
            return True
        return self.arch.tie_word_embeddings and name.startswith("lm_head.")


class GPT2TiedLmHeadNotSkipped(GPT2LMHeadModel):
    """JAIS's loader as first written: a parameter dict without aliases and no lm_head skip."""

    def load_weights(self, weights):
        params_dict = dict(self.named_parameters())
        loaded = set()
        for name, w in weights:
            name = self.normalize_name(name)
            if ".attn.bias" in name or ".attn.masked_bias" in name:
                continue
            if self.is_on_other_rank(name):
                continue
            param = params_dict[name]  # KeyError: 'lm_head.weight' when tied
            if any(c in name for c in CONV1D_MODULES) and name.endswith(".weight"):
                w = w.t()
            param.weight_loader(param, w)
            loaded.add(name)
        return loaded


# --- tensor-parallel slicing --------------------------------------------------------------------


def _kv_head_modulo(self, shard_id):
    full, size, offset, start = QKVParallelLinear._shard_geometry(self, shard_id)
    if shard_id in ("k", "v"):
        start = (self.tp_rank % self.total_num_kv_heads) * size if self.kv_replicas > 1 else start
    return full, size, offset, start


@torch.no_grad()
def _padding_left_alone(self, param, loaded_weight, loaded_shard_id=None):
    per_rank = self.num_embeddings_per_partition
    start = self.tp_rank * per_rank
    real = max(0, min(per_rank, self.num_embeddings - start))
    if real:
        param.data[:real].copy_(loaded_weight.narrow(0, start, real))


def _vocab_padding_not_zeroed(model):
    for module in model.modules():
        if isinstance(module, VocabParallelEmbedding):
            module.weight.weight_loader = types.MethodType(_padding_left_alone, module)


# --- order dependence ---------------------------------------------------------------------------


class LlamaShardsInArrivalOrder(LlamaForCausalLM):
    """gate_up_proj shards placed in the order they arrive, not by shard id.

    Right whenever gate_proj precedes up_proj, as it does in any name-sorted checkpoint.
    """

    def load_weights(self, weights):
        arrived: dict[str, int] = {}

        def reorder(stream):
            for name, w in stream:
                if name.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight")):
                    layer = name.rsplit(".", 2)[0]
                    slot = arrived.setdefault(layer, 0)
                    arrived[layer] += 1
                    name = f"{layer}.{'gate_proj' if slot == 0 else 'up_proj'}.weight"
                yield name, w

        return super().load_weights(reorder(weights))


# --- tracking -----------------------------------------------------------------------------------


class LlamaTrackedOnAnyShard(LlamaForCausalLM):
    """vLLM's own rule: a stacked parameter is 'loaded' as soon as one shard is written."""

    def load_weights(self, weights):
        loaded = set()
        for name, w in weights:
            if self.is_skipped(name) or self.is_on_other_rank(name):
                continue
            target, shard_id = self.stacked_target(name)
            param = dict(self.named_parameters())[target]
            if shard_id is None:
                param.weight_loader(param, w)
            else:
                param.weight_loader(param, w, shard_id)
            loaded.add(target)
        return loaded


class LlamaTracksCheckpointNames(LlamaForCausalLM):
    """Adds the checkpoint name, not the mapped runtime name, to the loaded set."""

    def load_weights(self, weights):
        weights = list(weights)
        super().load_weights(weights)
        return {n for n, _ in weights if not self.is_skipped(n)}


class PerFileLoader(ReferenceLoader):
    """Calls ``load_weights`` once per file and unions the results, as a loader that re-enters
    per consecutive group (vLLM's AutoWeightsLoader) does; the shard record does not survive."""

    name = "mutant per-file tracking"

    def load(self, model, checkpoint):
        from safetensors import safe_open

        from fixtures.checkpoint import stored_order

        loaded = set()
        for file in checkpoint.files():
            with safe_open(str(file), framework="pt") as f:
                loaded |= model.load_weights((n, f.get_tensor(n)) for n in stored_order(file))
        return loaded


class DoesNothingLoader(ReferenceLoader):
    name = "mutant load does nothing"

    def load(self, model, checkpoint):
        return None


class WritesCacheLoader(ReferenceLoader):
    """Leaves a converted-weights cache next to the checkpoint it read."""

    name = "mutant writes into the checkpoint"

    def load(self, model, checkpoint):
        loaded = super().load(model, checkpoint)
        (checkpoint.path / "converted.cache").write_bytes(b"cache")
        return loaded


MUTANTS = [
    Mutant(
        "conv1d_not_transposed",
        "GPT-2 Conv1D weights ([in, out]) loaded without the transpose",
        "vLLM PR #38074 (JAIS AutoWeightsLoader)",
        "roundtrip",
        ("gpt2",),
        MutantLoader("conv1d_not_transposed", {"gpt2": GPT2NoTranspose}),
        "c_",
    ),
    Mutant(
        "tied_lm_head_not_skipped",
        "with tied embeddings, the checkpoint's redundant lm_head.weight is looked up (KeyError)",
        "vLLM PR #38074 (JAIS: skip_prefixes=['lm_head.'] when tied)",
        "roundtrip",
        ("gpt2",),
        MutantLoader("tied_lm_head_not_skipped", {"gpt2": GPT2TiedLmHeadNotSkipped}),
        "KeyError: 'lm_head.weight'",
    ),
    Mutant(
        "masked_bias_not_skipped",
        "the .attn.masked_bias mask buffer is not skipped",
        "vLLM PR #38074 (JAIS)",
        "roundtrip",
        ("gpt2",),
        MutantLoader("masked_bias_not_skipped", {"gpt2": GPT2MaskedBiasNotSkipped}),
        "masked_bias",
    ),
    Mutant(
        "load_does_nothing",
        "load() returns without loading anything (and without tracking)",
        "the baseline every value property must reject",
        "roundtrip",
        ("llama", "gpt2"),
        DoesNothingLoader(),
        "never written",
    ),
    Mutant(
        "gqa_kv_head_modulo",
        "with tp_size > num_kv_heads, rank r takes kv head r % nKV instead of r // (T / nKV)",
        "GQA replication (vLLM QKVParallelLinear, docs/runtime-layout.md)",
        "roundtrip",
        ("llama",),
        MutantLoader(
            "gqa_kv_head_modulo", patch=_patch_modules(QKVParallelLinear, "_shard_geometry", _kv_head_modulo)
        ),
        "shard k",
    ),
    Mutant(
        "vocab_padding_not_zeroed",
        "vocab padding rows are left uninitialised instead of zero",
        "vLLM VocabParallelEmbedding padding rule",
        "roundtrip",
        ("llama", "gpt2"),
        MutantLoader("vocab_padding_not_zeroed", patch=_vocab_padding_not_zeroed),
        "vocab padding",
    ),
    Mutant(
        "shards_in_arrival_order",
        "gate/up shards placed in arrival order, right only for name-sorted checkpoints",
        "stream-order dependence (vLLM AutoWeightsLoader re-entry, reordered streams)",
        "invariance",
        ("llama",),
        MutantLoader("shards_in_arrival_order", {"llama": LlamaShardsInArrivalOrder}),
        "gate_up_proj",
    ),
    Mutant(
        "tracked_on_any_shard",
        "a fused parameter is reported loaded after one shard (a missing k_proj goes unnoticed)",
        "vLLM load_weights stacked-params tracking",
        "missing_tensor",
        ("llama",),
        MutantLoader("tracked_on_any_shard", {"llama": LlamaTrackedOnAnyShard}),
        "reported as loaded but should not be",
    ),
    Mutant(
        "tracks_checkpoint_names",
        "the loaded set holds checkpoint names instead of runtime parameter names",
        "vLLM track_weights_loading: 'Following weights were not initialized'",
        "tracking",
        ("llama",),
        MutantLoader("tracks_checkpoint_names", {"llama": LlamaTracksCheckpointNames}),
        "q_proj",
    ),
    Mutant(
        "per_file_tracking",
        "tracking restarts per file, so a fused parameter split across files is never reported",
        "vLLM AutoWeightsLoader groups consecutive names and re-enters load_weights",
        "tracking",
        ("llama",),
        PerFileLoader(),
        "loaded from the checkpoint but not reported",
    ),
    Mutant(
        "writes_into_checkpoint",
        "the loader leaves a cache file in the checkpoint directory",
        "loaders that cache converted weights next to the checkpoint",
        "checkpoint_unchanged",
        ("llama", "gpt2"),
        WritesCacheLoader(),
        "converted.cache: added",
    ),
]

BY_NAME = {m.name: m for m in MUTANTS}
