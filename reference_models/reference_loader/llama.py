"""Llama-family decoder, built to the runtime names of docs/runtime-layout.md and nothing else.

Checkpoint names differ from runtime names only where vLLM fuses (q/k/v into ``qkv_proj``,
gate/up into ``gate_up_proj``); everything else loads under its own name.  The routing decisions
are small methods (``is_skipped``, ``is_on_other_rank``, ``stacked_target``, ``lora_base_name``)
so a test can build a mutant loader by overriding exactly one of them with a realistic bug.

The pieces here (attention, MLP, the decoder stack with its pipeline placement) are reused by the
MoE families in ``qwen3_moe.py``/``qwen2_moe.py``; ``make_layer`` is where they differ.
"""

from __future__ import annotations

from typing import Hashable, Iterable

import torch
from torch import nn

from weightcheck.arch import Arch, Placement
from weightcheck.reference_models.reference_loader.layers import (
    MergedColumnParallelLinear,
    ParallelLMHead,
    PPMissingLayer,
    QKVParallelLinear,
    RMSNorm,
    RowParallelLinear,
    VocabParallelEmbedding,
    layer_quant,
)
from weightcheck.reference_models.reference_loader.lora import wrap_lora
from weightcheck.reference_models.reference_loader.tracking import LoadTracker, naming, tracker_for

ROTARY_BUFFERS = ("inv_freq", "cos_cached", "sin_cached")


class LlamaAttention(nn.Module):
    """``qkv_bias``/``o_bias`` default to ``arch.attention_bias``, ``head_dim`` to
    ``arch.head_dim``.  ``prefix`` is the checkpoint module name (``model.layers.{i}.self_attn``),
    which decides FP8 (``arch.fp8``) layer by layer."""

    def __init__(
        self,
        arch: Arch,
        placement: Placement,
        *,
        prefix: str = "",
        head_dim: int | None = None,
        qkv_bias: bool | None = None,
        o_bias: bool | None = None,
    ) -> None:
        super().__init__()
        dtype = arch.torch_dtype
        head_dim = arch.head_dim if head_dim is None else head_dim
        qkv_bias = arch.attention_bias if qkv_bias is None else qkv_bias
        o_bias = arch.attention_bias if o_bias is None else o_bias
        self.qkv_proj = QKVParallelLinear(
            arch.hidden_size, head_dim, arch.num_heads, arch.num_kv_heads, qkv_bias,
            placement, dtype,
            quant=layer_quant(arch, [f"{prefix}.{p}_proj" for p in "qkv"]),
        )
        self.o_proj = RowParallelLinear(
            arch.num_heads * head_dim, arch.hidden_size, o_bias, placement, dtype,
            quant=layer_quant(arch, [f"{prefix}.o_proj"]),
        )


class LlamaMLP(nn.Module):
    """Gated MLP; ``intermediate_size`` defaults to ``arch.intermediate_size`` (a shared expert
    passes its own).  ``prefix``: the checkpoint module name (``model.layers.{i}.mlp``)."""

    def __init__(
        self, arch: Arch, placement: Placement, intermediate_size: int | None = None,
        *, prefix: str = "",
    ) -> None:
        super().__init__()
        dtype = arch.torch_dtype
        size = arch.intermediate_size if intermediate_size is None else intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(
            arch.hidden_size, [size] * 2, False, placement, dtype,
            quant=layer_quant(arch, [f"{prefix}.gate_proj", f"{prefix}.up_proj"]),
        )
        self.down_proj = RowParallelLinear(
            size, arch.hidden_size, False, placement, dtype,
            quant=layer_quant(arch, [f"{prefix}.down_proj"]),
        )


class LlamaDecoderLayer(nn.Module):
    def __init__(self, arch: Arch, placement: Placement, prefix: str = "") -> None:
        super().__init__()
        self.self_attn = LlamaAttention(arch, placement, prefix=f"{prefix}.self_attn")
        self.mlp = LlamaMLP(arch, placement, prefix=f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(arch.hidden_size, placement, arch.torch_dtype)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, placement, arch.torch_dtype)


class LlamaModel(nn.Module):
    """The decoder stack of one pipeline rank.

    Under PP the embedding lives on the first rank, plus the last one when tied so ``lm_head``
    has something to alias; the final norm lives on the last rank.
    """

    def __init__(self, arch: Arch, placement: Placement, make_layer=None) -> None:
        super().__init__()
        dtype = arch.torch_dtype
        if make_layer is None:
            def make_layer(arch, placement, index):
                return LlamaDecoderLayer(arch, placement, f"model.layers.{index}")
        needs_embedding = placement.is_first_pp_rank or (
            arch.tie_word_embeddings and placement.is_last_pp_rank
        )
        self.embed_tokens = (
            VocabParallelEmbedding(arch.vocab_size, arch.hidden_size, placement, dtype)
            if needs_embedding
            else PPMissingLayer()
        )
        self.layers = nn.ModuleList(
            make_layer(arch, placement, i) if i in placement.layers else PPMissingLayer()
            for i in range(arch.num_layers)
        )
        self.norm = (
            RMSNorm(arch.hidden_size, placement, dtype)
            if placement.is_last_pp_rank
            else PPMissingLayer()
        )


class LlamaForCausalLM(nn.Module):
    # (runtime segment, checkpoint segment, shard id), matched on whole name segments.
    stacked_params_mapping: tuple[tuple[str, str, Hashable], ...] = (
        ("qkv_proj", "q_proj", "q"),
        ("qkv_proj", "k_proj", "k"),
        ("qkv_proj", "v_proj", "v"),
        ("gate_up_proj", "gate_proj", 0),
        ("gate_up_proj", "up_proj", 1),
    )

    def __init__(self, arch: Arch, placement: Placement) -> None:
        super().__init__()
        self.check_arch(arch)
        self.arch = arch
        self.placement = placement
        self.model = LlamaModel(arch, placement, self.make_layer)
        if not placement.is_last_pp_rank:
            self.lm_head = PPMissingLayer()
        elif arch.tie_word_embeddings:
            # Registered after ``model``, so named_parameters() (which drops duplicates) lists
            # the shared tensor only as model.embed_tokens.weight, exactly as in vLLM.
            self.lm_head = self.model.embed_tokens
        else:
            self.lm_head = ParallelLMHead(
                arch.vocab_size, arch.hidden_size, placement, arch.torch_dtype
            )
        self._missing_prefixes = tuple(
            f"{name}." for name, module in self.named_modules() if isinstance(module, PPMissingLayer)
        )
        # LoRA wrapping after building, as vLLM does; names of the wrapper modules.
        self._lora_prefixes = wrap_lora(self, arch)

    # -- building ------------------------------------------------------------------------------

    def check_arch(self, arch: Arch) -> None:
        if arch.moe is not None:
            raise ValueError(f"family {arch.family!r} has no mixture of experts; arch.moe is set")

    def make_layer(self, arch: Arch, placement: Placement, index: int) -> nn.Module:
        """The decoder layer of global index ``index`` (only called for this rank's layers)."""
        return LlamaDecoderLayer(arch, placement, f"model.layers.{index}")

    # -- routing hooks: override one to build a mutant ------------------------------------------

    def is_skipped(self, name: str) -> bool:
        """Checkpoint tensors that are not weights of this model at all."""
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] == "rotary_emb" and parts[-1] in ROTARY_BUFFERS:
            return True
        return self.arch.tie_word_embeddings and name.startswith("lm_head.")

    def is_on_other_rank(self, name: str) -> bool:
        """Real weights whose module another pipeline rank owns (a prefix test, as in vLLM)."""
        return name.startswith(self._missing_prefixes)

    def stacked_target(self, name: str) -> tuple[str, Hashable | None]:
        """The runtime parameter a checkpoint name loads into, and which shard of it."""
        parts = name.split(".")
        for runtime_part, checkpoint_part, shard_id in self.stacked_params_mapping:
            if checkpoint_part in parts:
                parts[parts.index(checkpoint_part)] = runtime_part
                return ".".join(parts), shard_id
        return name, None

    def lora_base_name(self, name: str) -> str:
        """``a.qkv_proj.weight`` -> ``a.qkv_proj.base_layer.weight`` when ``a.qkv_proj`` is
        LoRA-wrapped (checkpoints never name ``base_layer``); otherwise ``name`` itself."""
        prefix, _, leaf = name.rpartition(".")
        if prefix in self._lora_prefixes:
            return f"{prefix}.base_layer.{leaf}"
        return name

    # -------------------------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load a checkpoint stream; return the runtime names every shard of which was loaded.

        Within ``ReferenceLoader.load`` (one call per checkpoint file) the shard record spans all
        calls of the load; a bare call tracks on its own (``tracker_for``)."""
        tracker = tracker_for(self)
        for name, loaded_weight in weights:
            with naming(name):
                if self.is_skipped(name) or self.is_on_other_rank(name):
                    continue
                self.load_dense(tracker, name, loaded_weight)
        return tracker.loaded()

    def load_dense(self, tracker: LoadTracker, name: str, loaded_weight: torch.Tensor) -> None:
        """One tensor that is not an expert's: stacked (q/k/v, gate/up) or loaded whole."""
        target, shard_id = self.stacked_target(name)
        target = self.lora_base_name(target)
        param = tracker.param(target, name)
        if shard_id is None:
            param.weight_loader(param, loaded_weight)
        else:
            param.weight_loader(param, loaded_weight, shard_id)
        tracker.record(target, shard_id)
