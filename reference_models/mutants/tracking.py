"""What a loader reports as loaded (and the baseline loader that loads nothing)."""

from __future__ import annotations

from weightcheck.reference_models.reference_loader.llama import LlamaForCausalLM
from weightcheck.reference_models.reference_loader.loader import ReferenceLoader

from .base import Mutant, MutantLoader


class LlamaTrackedOnAnyShard(LlamaForCausalLM):
    """vLLM's own rule: a stacked parameter is 'loaded' as soon as one shard is written."""

    def load_weights(self, weights):
        loaded = set()
        for name, w in weights:
            if self.is_skipped(name) or self.is_on_other_rank(name):
                continue
            target, shard_id = self.stacked_target(name)
            target = self.lora_base_name(target)
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

        from weightcheck.checkpoint import stored_order

        loaded = set()
        for file in checkpoint.files():
            with safe_open(str(file), framework="pt") as f:
                loaded |= model.load_weights((n, f.get_tensor(n)) for n in stored_order(file))
        return loaded


class DoesNothingLoader(ReferenceLoader):
    name = "mutant load does nothing"

    def load(self, model, checkpoint):
        return None


class ModuleExemptedWholesale(ReferenceLoader):
    """Seed #41086: ``track_weights_loading`` adds every parameter of an exempted module to the
    loaded set; here every module that loaded anything is exempted, so its missing bias is not
    noticed (the seed's exemption applied to quantized modules; the mechanism is the same)."""

    name = "mutant module exempted wholesale"

    def load(self, model, checkpoint):
        loaded = super().load(model, checkpoint)
        for prefix, module in model.named_modules():
            own = {f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)}
            if own & loaded:
                loaded |= own
        return loaded


MUTANTS = [
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
        "module_exempted_wholesale",
        "every parameter of a module that loaded anything counts as loaded (a missing bias hides)",
        "vLLM PR #41086 (track_weights_loading over-broad quantized-module exemption)",
        "missing_tensor",
        ("llama",),
        ModuleExemptedWholesale(),
        "reported as loaded but should not be",
    ),
]
