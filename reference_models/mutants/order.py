"""Dependence on the order tensors arrive in."""

from __future__ import annotations

from weightcheck.reference_models.reference_loader.llama import LlamaForCausalLM

from .base import Mutant, MutantLoader


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


MUTANTS = [
    Mutant(
        "shards_in_arrival_order",
        "gate/up shards placed in arrival order, right only for name-sorted checkpoints",
        "stream-order dependence (vLLM AutoWeightsLoader re-entry, reordered streams)",
        "invariance",
        ("llama",),
        MutantLoader("shards_in_arrival_order", {"llama": LlamaShardsInArrivalOrder}),
        "gate_up_proj",
    ),
]
