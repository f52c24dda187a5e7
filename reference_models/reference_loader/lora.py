"""LoRA wrapping, as vLLM does it: a targeted layer becomes ``wrapper.base_layer``.

So ``...qkv_proj.weight`` is afterwards named ``...qkv_proj.base_layer.weight`` and
``...mlp.experts.w13_weight`` becomes ``...mlp.experts.base_layer.w13_weight``.  The LoRA A/B
tensors are registered as buffers, not parameters: they are adapter state, not base weights, so
``named_parameters()`` (the canonical state) lists exactly the base weights and nothing else.
Checkpoints never name ``base_layer``; the models map their names onto the wrapped layout.
"""

from __future__ import annotations

import torch
from torch import nn

from weightcheck.arch import Arch
from weightcheck.reference_models.reference_loader.layers import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from weightcheck.reference_models.reference_loader.moe import FusedMoE

# The weight matrices that get an adapter (never biases or scales).
LORA_WEIGHTS = ("weight", "w13_weight", "w2_weight")

# target -> (the module's attribute name, the layer class wrapped)
LORA_MODULES: dict[str, tuple[str, type]] = {
    "qkv": ("qkv_proj", QKVParallelLinear),
    "o": ("o_proj", RowParallelLinear),
    "gate_up": ("gate_up_proj", MergedColumnParallelLinear),
    "down": ("down_proj", RowParallelLinear),
    "experts": ("experts", FusedMoE),
}


class LoRAWrapper(nn.Module):
    """Keeps the original layer as ``base_layer``; A/B per weight matrix as zero buffers.

    For a (possibly batched, as for experts) weight ``[..., out, in]``: ``lora_a_<name>``
    ``[..., rank, in]`` and ``lora_b_<name>`` ``[..., out, rank]``.
    """

    def __init__(self, base_layer: nn.Module, rank: int) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.base_layer = base_layer
        self.rank = rank
        for name, p in list(base_layer.named_parameters(recurse=False)):
            if name not in LORA_WEIGHTS:
                continue  # biases and FP8 scales have no adapter; scales stay in base_layer
            *batch, out, inp = p.shape
            # The adapter is in the model dtype even over an FP8 base weight.
            kw = {"dtype": getattr(base_layer, "dtype", p.dtype), "device": p.device}
            self.register_buffer(f"lora_a_{name}", torch.zeros(*batch, rank, inp, **kw))
            self.register_buffer(f"lora_b_{name}", torch.zeros(*batch, out, rank, **kw))


def wrap_lora(model: nn.Module, arch: Arch) -> frozenset[str]:
    """Wrap every layer ``arch.lora`` targets; return the module names of all wrappers.

    Idempotent: a wrapped layer is a ``LoRAWrapper`` now, so it is not matched again.
    """
    if arch.lora is not None:
        wanted = [LORA_MODULES[t] for t in arch.lora.targets]
        for name, module in list(model.named_modules()):
            parent_name, _, leaf = name.rpartition(".")
            if any(leaf == attr and isinstance(module, cls) for attr, cls in wanted):
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, leaf, LoRAWrapper(module, arch.lora.rank))
    return frozenset(n for n, m in model.named_modules() if isinstance(m, LoRAWrapper))
