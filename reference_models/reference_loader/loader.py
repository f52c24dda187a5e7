"""The reference loader as the suite sees it: the protocol object ``--loader`` names.

It is an independent implementation of docs/runtime-layout.md, deliberately sharing no mapping
code with the oracle, so that the two can only agree when both read the document the same way.
"""

from __future__ import annotations

import torch

from conformance.protocol import Capabilities
from reference_models.arch import Arch, Placement
from reference_models.reference_loader.gpt2 import GPT2LMHeadModel
from reference_models.reference_loader.llama import LlamaForCausalLM
from reference_models.reference_loader.qwen2_moe import Qwen2MoeForCausalLM
from reference_models.reference_loader.qwen3_moe import Qwen3MoeForCausalLM

MODELS = {
    "llama": LlamaForCausalLM,
    "gpt2": GPT2LMHeadModel,
    "qwen3_moe": Qwen3MoeForCausalLM,
    "qwen2_moe": Qwen2MoeForCausalLM,
}


class ReferenceLoader:
    name = "weightcheck reference loader"
    capabilities = Capabilities()

    def build(self, arch: Arch, placement: Placement) -> torch.nn.Module:
        try:
            model_cls = MODELS[arch.family]
        except KeyError:
            raise ValueError(
                f"the reference loader has no model for family {arch.family!r}; "
                f"known: {sorted(MODELS)}"
            ) from None
        return model_cls(arch, placement)

    def load(self, model: torch.nn.Module, checkpoint) -> set[str]:
        return model.load_weights(checkpoint.weights())

    def state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The base weights of this rank: LoRA A/B are buffers, so never listed here."""
        return dict(model.named_parameters())


loader = ReferenceLoader()
