"""Tensors of the weight stream kept past their turn, without a copy (reused staging buffers)."""

from __future__ import annotations

import torch

from weightcheck.reference_models.reference_loader.deepseek_v32 import DeepseekV32ForCausalLM
from weightcheck.reference_models.reference_loader.llama import LlamaForCausalLM
from weightcheck.reference_models.reference_loader.tracking import tracker_for

from .base import Mutant, MutantLoader


class PendingWkKeptAsView(DeepseekV32ForCausalLM):
    """The FP8 indexer ``wk`` waiting for its scale is kept as the stream's tensor itself: a
    reader that reuses its buffer (SGLang #38908's RunAI streamer) has overwritten it by then."""

    def hold(self, tensor):
        return tensor


class LlamaBuffersGateUpViews(LlamaForCausalLM):
    """gate and up are buffered until both arrived, then written fused in one call (as loaders
    for checkpoint-fused or packed modules do); the buffered tensors are the stream's own."""

    def load_weights(self, weights):
        tracker = tracker_for(self)
        waiting: dict[str, dict[str, torch.Tensor]] = {}

        def rest(stream):
            for name, tensor in stream:
                for part in ("gate_proj", "up_proj"):
                    if name.endswith(f"mlp.{part}.weight"):
                        layer = name.removesuffix(f"{part}.weight")
                        halves = waiting.setdefault(layer, {})
                        halves[part] = tensor  # kept as is
                        if len(halves) == 2:
                            target = self.lora_base_name(layer + "gate_up_proj.weight")
                            param = tracker.param(target, name)
                            param.weight_loader(param, torch.cat([halves["gate_proj"], halves["up_proj"]]))
                            tracker.record(target)
                        break
                else:
                    yield name, tensor

        super().load_weights(rest(weights))
        return tracker.loaded()


MUTANTS = [
    Mutant(
        "pending_wk_kept_as_view",
        "the FP8 indexer wk waiting for its scale is kept without a copy",
        "SGLang #38908 / #33582 / #30240 (tensors retained while the RunAI staging buffer is reused)",
        "hostile_stream",
        ("deepseek_v32",),
        MutantLoader("pending_wk_kept_as_view", {"deepseek_v32": PendingWkKeptAsView}),
        "wk_weights_proj",
    ),
    Mutant(
        "gate_up_buffered_as_views",
        "gate and up are buffered as the stream's own tensors until both arrived",
        "packed-module loaders that buffer shards before writing them fused",
        "hostile_stream",
        ("llama",),
        MutantLoader("gate_up_buffered_as_views", {"llama": LlamaBuffersGateUpViews}),
        "gate_up_proj",
    ),
]
