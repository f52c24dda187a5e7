"""``deepseek_v32`` (DeepSeek-V3.2 / GLM-5): MLA attention with the sparse-attention indexer.

Built to docs/runtime-layout.md ("``deepseek_v32``"), reduced as the document is: every layer has
a dense llama MLP, no MoE, no rope math.  Per layer ``model.layers.{i}.self_attn``:

* ``fused_qkv_a_proj`` = ``[q_a_proj | kv_a_proj_with_mqa]`` on rows, held whole by every rank
  (vLLM's ``MergedColumnParallelLinear(..., disable_tp=True)``);
* ``q_a_layernorm``, ``kv_a_layernorm``: replicated norms;
* ``q_b_proj``, ``kv_b_proj`` column-parallel, ``o_proj`` row-parallel;
* ``indexer.wq_b`` replicated, ``indexer.k_norm`` a LayerNorm (weight and bias);
* ``indexer.wk_weights_proj`` = ``[wk | weights_proj]``, replicated and always in the model
  dtype: an FP8 ``wk`` is dequantised at load time, which needs its weight AND its scale.  Those
  may arrive in either order, in different files or in different ``load_weights`` calls, so the
  first to arrive waits on the model object (``_pending_wk``) until its partner comes; a half
  still waiting when the load ends (``reset_pending``) loaded nothing and is never reported.

Under PP the layers of other ranks are skipped by name before any parameter lookup (vLLM PR
#42944: the indexer's path looked the parameter up first and raised ``KeyError`` there).
"""

from __future__ import annotations

from typing import Hashable, Iterable

import torch
from torch import nn

from weightcheck.arch import Arch, Placement
from weightcheck.reference_models.reference_loader.layers import (
    ColumnParallelLinear,
    LayerNorm,
    MergedReplicatedLinear,
    RMSNorm,
    ReplicatedLinear,
    RowParallelLinear,
    layer_quant,
)
from weightcheck.reference_models.reference_loader.llama import LlamaForCausalLM, LlamaMLP
from weightcheck.reference_models.reference_loader.quant import get_quant_method
from weightcheck.reference_models.reference_loader.tracking import LoadTracker, naming, tracker_for

WK = "wk"  # the indexer's key projection, checkpoint ``...indexer.wk.*``
WK_SHARD = 0  # its rows in wk_weights_proj; weights_proj is shard 1


class DeepseekV32Indexer(nn.Module):
    def __init__(self, arch: Arch, placement: Placement, prefix: str) -> None:
        super().__init__()
        mla, dtype = arch.mla, arch.torch_dtype
        self.wq_b = ReplicatedLinear(
            mla.q_lora_rank, mla.index_n_heads * mla.index_head_dim, False, placement, dtype,
            quant=layer_quant(arch, [f"{prefix}.wq_b"]),
        )
        # Never FP8 itself: an FP8 wk is dequantised into it by the model's load_weights.
        self.wk_weights_proj = MergedReplicatedLinear(
            arch.hidden_size, [mla.index_head_dim, mla.index_n_heads], False, placement, dtype
        )
        self.k_norm = LayerNorm(mla.index_head_dim, placement, dtype)
        # How the checkpoint's wk is quantised: its method dequantises it (block-wise, or
        # per-tensor for completeness) and names its scale leaves.
        self.wk_quant = layer_quant(arch, [f"{prefix}.{WK}"])
        self.wk_quant_method = get_quant_method(self.wk_quant)


class DeepseekV32Attention(nn.Module):
    def __init__(self, arch: Arch, placement: Placement, prefix: str) -> None:
        super().__init__()
        mla, dtype, h, nh = arch.mla, arch.torch_dtype, arch.hidden_size, arch.num_heads
        self.fused_qkv_a_proj = MergedReplicatedLinear(
            h, [mla.q_lora_rank, mla.kv_lora_rank + mla.qk_rope_head_dim], False, placement,
            dtype, quant=layer_quant(arch, [f"{prefix}.q_a_proj", f"{prefix}.kv_a_proj_with_mqa"]),
        )
        self.q_a_layernorm = RMSNorm(mla.q_lora_rank, placement, dtype)
        self.q_b_proj = ColumnParallelLinear(
            mla.q_lora_rank, nh * mla.qk_head_dim, False, placement, dtype,
            quant=layer_quant(arch, [f"{prefix}.q_b_proj"]),
        )
        self.kv_a_layernorm = RMSNorm(mla.kv_lora_rank, placement, dtype)
        self.kv_b_proj = ColumnParallelLinear(
            mla.kv_lora_rank, nh * (mla.qk_nope_head_dim + mla.v_head_dim), False, placement,
            dtype, quant=layer_quant(arch, [f"{prefix}.kv_b_proj"]),
        )
        self.o_proj = RowParallelLinear(
            nh * mla.v_head_dim, h, False, placement, dtype,
            quant=layer_quant(arch, [f"{prefix}.o_proj"]),
        )
        self.indexer = DeepseekV32Indexer(arch, placement, f"{prefix}.indexer")


class DeepseekV32DecoderLayer(nn.Module):
    def __init__(self, arch: Arch, placement: Placement, prefix: str) -> None:
        super().__init__()
        self.self_attn = DeepseekV32Attention(arch, placement, f"{prefix}.self_attn")
        self.mlp = LlamaMLP(arch, placement, prefix=f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(arch.hidden_size, placement, arch.torch_dtype)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, placement, arch.torch_dtype)


class DeepseekV32ForCausalLM(LlamaForCausalLM):
    stacked_params_mapping: tuple[tuple[str, str, Hashable], ...] = (
        ("fused_qkv_a_proj", "q_a_proj", 0),
        ("fused_qkv_a_proj", "kv_a_proj_with_mqa", 1),
        ("gate_up_proj", "gate_proj", 0),
        ("gate_up_proj", "up_proj", 1),
        ("wk_weights_proj", "weights_proj", 1),
    )

    def __init__(self, arch: Arch, placement: Placement) -> None:
        # Halves of an FP8 wk waiting for their partner: runtime target -> {"weight"|scale: t}.
        # Kept on the model, not in load_weights, because the partner may come in a later call.
        self._pending_wk: dict[str, dict[str, torch.Tensor]] = {}
        super().__init__(arch, placement)

    # -- building ------------------------------------------------------------------------------

    def check_arch(self, arch: Arch) -> None:
        if arch.mla is None:
            raise ValueError(f"family {arch.family!r} needs arch.mla")
        if arch.moe is not None:
            raise ValueError(f"family {arch.family!r} is modelled without MoE; arch.moe is set")
        if arch.lora is not None:
            raise ValueError(f"family {arch.family!r} has no LoRA wrapping")
        if arch.attention_bias:
            raise ValueError(f"family {arch.family!r} has no attention bias")
        if arch.num_kv_heads != arch.num_heads:
            raise ValueError(f"family {arch.family!r} has nKV = nH (MLA)")

    def make_layer(self, arch: Arch, placement: Placement, index: int) -> nn.Module:
        return DeepseekV32DecoderLayer(arch, placement, f"model.layers.{index}")

    def hold(self, tensor: torch.Tensor) -> torch.Tensor:
        """A copy of a tensor kept past its turn in the stream: the stream may reuse its buffer
        for the next tensor (zero-copy readers do), so a kept view would turn into garbage."""
        return tensor.detach().clone()

    def reset_pending(self) -> None:
        """Drop halves that never met their partner (called at the start and end of a load)."""
        self._pending_wk.clear()

    # -------------------------------------------------------------------------------------------

    def wk_leaf(self, name: str) -> str | None:
        """``weight`` / a scale leaf when ``name`` is a tensor of an ``indexer.wk`` module."""
        parts = name.split(".")
        if len(parts) >= 3 and parts[-3] == "indexer" and parts[-2] == WK:
            return parts[-1]
        return None

    def load_wk(self, tracker: LoadTracker, name: str, leaf: str, loaded_weight: torch.Tensor):
        """``indexer.wk.*`` into shard 0 of ``wk_weights_proj``, dequantising an FP8 ``wk`` once
        both its weight and its scale are here (whichever came first waits on the model)."""
        module = name.rsplit(".", 2)[0]  # ...self_attn.indexer
        target = f"{module}.wk_weights_proj.weight"
        param = tracker.param(target, name)
        indexer = self.get_submodule(module)
        method = indexer.wk_quant_method
        if indexer.wk_quant is None:
            if leaf != "weight":
                raise ValueError(f"checkpoint tensor {name!r}: {module}.{WK} is not quantised")
            param.weight_loader(param, loaded_weight, WK_SHARD)
            tracker.record(target, WK_SHARD)
            return
        scale_leaf = method.weight_scale_name
        if leaf == method.input_scale_name:
            return  # activations of the fused model-dtype layer are not quantised
        if leaf not in ("weight", scale_leaf):
            raise ValueError(f"checkpoint tensor {name!r} matches no parameter of this model")
        pending = self._pending_wk.setdefault(target, {})
        pending[leaf] = self.hold(loaded_weight)
        if "weight" in pending and scale_leaf in pending:
            halves = self._pending_wk.pop(target)
            weight = method.dequantize(
                halves["weight"], halves[scale_leaf], self.arch.torch_dtype, f"{module}.{WK}"
            )
            param.weight_loader(param, weight, WK_SHARD)
            tracker.record(target, WK_SHARD)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load a checkpoint stream; return the runtime names every piece of which was loaded.

        PP: a tensor of a layer this rank does not hold is skipped first, by name, before any
        parameter (or the indexer module) is looked up."""
        tracker = tracker_for(self)
        for name, loaded_weight in weights:
            with naming(name):
                if self.is_skipped(name) or self.is_on_other_rank(name):
                    continue
                leaf = self.wk_leaf(name)
                if leaf is not None:
                    self.load_wk(tracker, name, leaf, loaded_weight)
                else:
                    self.load_dense(tracker, name, loaded_weight)
        return tracker.loaded()
