"""GPT-2, built to the runtime names of docs/runtime-layout.md.

GPT-2 is where loaders go wrong in ways Llama never exercises (vLLM PR #38074, JAIS): Conv1D
weights stored ``[in, out]`` that must be transposed, mask buffers named ``attn.bias`` sitting
next to the real ``attn.c_attn.bias``, a fused ``c_attn`` split by total head counts, and old
checkpoints without the ``transformer.`` prefix.  Each decision is one small method
(``normalize_name``, ``is_skipped``, ``is_on_other_rank``, ``needs_transpose``) so a test can
build a mutant loader by overriding exactly one of them with a realistic bug.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from weightcheck.arch import Arch, Placement
from weightcheck.reference_models.reference_loader.layers import (
    ColumnParallelLinear,
    LayerNorm,
    ParallelLMHead,
    PPMissingLayer,
    QKVParallelLinear,
    ReplicatedEmbedding,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from weightcheck.reference_models.reference_loader.tracking import naming, tracker_for

CONV1D_MODULES = ("c_attn", "c_proj", "c_fc")
MASK_BUFFERS = ("bias", "masked_bias")


class GPT2Attention(nn.Module):
    def __init__(self, arch: Arch, placement: Placement) -> None:
        super().__init__()
        dtype = arch.torch_dtype
        # GPT-2 has no GQA: every query head has its own kv head, whatever arch.num_kv_heads says.
        self.c_attn = QKVParallelLinear(
            arch.hidden_size, arch.head_dim, arch.num_heads, arch.num_heads, True, placement, dtype
        )
        self.c_proj = RowParallelLinear(arch.q_size, arch.hidden_size, True, placement, dtype)


class GPT2MLP(nn.Module):
    def __init__(self, arch: Arch, placement: Placement) -> None:
        super().__init__()
        dtype = arch.torch_dtype
        self.c_fc = ColumnParallelLinear(
            arch.hidden_size, arch.intermediate_size, True, placement, dtype
        )
        self.c_proj = RowParallelLinear(
            arch.intermediate_size, arch.hidden_size, True, placement, dtype
        )


class GPT2Block(nn.Module):
    def __init__(self, arch: Arch, placement: Placement) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(arch.hidden_size, placement, arch.torch_dtype)
        self.attn = GPT2Attention(arch, placement)
        self.ln_2 = LayerNorm(arch.hidden_size, placement, arch.torch_dtype)
        self.mlp = GPT2MLP(arch, placement)


class GPT2Model(nn.Module):
    """The transformer of one pipeline rank; same PP placement rule as the Llama model."""

    def __init__(self, arch: Arch, placement: Placement) -> None:
        super().__init__()
        dtype = arch.torch_dtype
        first, last = placement.is_first_pp_rank, placement.is_last_pp_rank
        needs_wte = first or (arch.tie_word_embeddings and last)
        self.wte = (
            VocabParallelEmbedding(arch.vocab_size, arch.hidden_size, placement, dtype)
            if needs_wte
            else PPMissingLayer()
        )
        self.wpe = (
            ReplicatedEmbedding(arch.max_position_embeddings, arch.hidden_size, placement, dtype)
            if first
            else PPMissingLayer()
        )
        self.h = nn.ModuleList(
            GPT2Block(arch, placement) if i in placement.layers else PPMissingLayer()
            for i in range(arch.num_layers)
        )
        self.ln_f = LayerNorm(arch.hidden_size, placement, dtype) if last else PPMissingLayer()


class GPT2LMHeadModel(nn.Module):
    def __init__(self, arch: Arch, placement: Placement) -> None:
        super().__init__()
        if arch.lora is not None:
            raise ValueError("gpt2 does not support LoRA wrapping in the reference loader")
        if arch.moe is not None:
            raise ValueError("gpt2 has no mixture of experts; arch.moe is set")
        if arch.quant is not None:
            raise ValueError("the reference loader has no FP8 gpt2 (the layout defines none)")
        if arch.num_heads * arch.head_dim != arch.hidden_size:
            raise ValueError(
                f"gpt2 needs num_heads * head_dim == hidden_size, got "
                f"{arch.num_heads} * {arch.head_dim} != {arch.hidden_size}"
            )
        self.arch = arch
        self.placement = placement
        self.transformer = GPT2Model(arch, placement)
        if not placement.is_last_pp_rank:
            self.lm_head = PPMissingLayer()
        elif arch.tie_word_embeddings:
            # Registered after ``transformer``: named_parameters() lists only transformer.wte.weight.
            self.lm_head = self.transformer.wte
        else:
            self.lm_head = ParallelLMHead(
                arch.vocab_size, arch.hidden_size, placement, arch.torch_dtype
            )
        self._missing_prefixes = tuple(
            f"{name}." for name, module in self.named_modules() if isinstance(module, PPMissingLayer)
        )

    # -- routing hooks: override one to build a mutant ------------------------------------------

    def normalize_name(self, name: str) -> str:
        """Old GPT-2 checkpoints name the transformer's tensors without ``transformer.``."""
        if name.startswith(("transformer.", "lm_head.")):
            return name
        return f"transformer.{name}"

    def is_skipped(self, name: str) -> bool:
        """Causal-mask buffers (``attn.bias``, ``attn.masked_bias``) and a tied ``lm_head``.

        Matched on whole segments: ``attn.c_attn.bias`` is a real bias and must load.
        """
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] == "attn" and parts[-1] in MASK_BUFFERS:
            return True
        return self.arch.tie_word_embeddings and name.startswith("lm_head.")

    def is_on_other_rank(self, name: str) -> bool:
        return name.startswith(self._missing_prefixes)

    def needs_transpose(self, name: str) -> bool:
        """Conv1D weights are stored ``[in, out]``; biases are 1-D and never transposed."""
        parts = name.split(".")
        return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in CONV1D_MODULES

    # -------------------------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load a checkpoint stream; return the runtime names that were fully loaded.

        ``c_attn`` arrives fused, so one tensor loads all of q, k and v at once.
        """
        tracker = tracker_for(self)
        for name, loaded_weight in weights:
            with naming(name):
                name = self.normalize_name(name)
                if self.is_skipped(name) or self.is_on_other_rank(name):
                    continue
                if self.needs_transpose(name):
                    if loaded_weight.dim() != 2:
                        raise ValueError(f"a Conv1D weight has 2 dimensions, this one {tuple(loaded_weight.shape)}")
                    loaded_weight = loaded_weight.t()
                param = tracker.param(name)
                param.weight_loader(param, loaded_weight)
                tracker.record(name)
        return tracker.loaded()
