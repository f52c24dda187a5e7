"""``qwen3_moe``: llama attention (plus per-head ``q_norm``/``k_norm``) and sparse MoE MLPs.

Built to the runtime names of docs/runtime-layout.md ("MoE"): per layer either a dense llama MLP
(``layer in arch.moe.dense_layers``) or a router ``mlp.gate`` plus a ``FusedMoE`` ``mlp.experts``.

Expert checkpoint tensors come in two formats and the loader accepts both:

* per expert (HF): ``mlp.experts.{e}.{gate,up,down}_proj.weight``, routed through
  ``expert_params_mapping()`` — a list of ``(param_name, weight_name, shard_id, expert_id)`` in
  vLLM's style (``("experts.w13_", "experts.3.gate_proj.", "w1", 3)``);
* fused 3-D (transformers v5): ``mlp.experts.gate_up_proj`` ``[E, 2Im, H]`` and
  ``mlp.experts.down_proj`` ``[E, H, Im]``, split per expert by ``load_fused_expert_weights``,
  which calls the MoE ``weight_loader`` once per expert with keyword ``shard_id``/``expert_id``
  (vLLM's ``load_fused_expert_weights``; the code path of seed PR #42716).

Under LoRA the experts are ``mlp.experts.base_layer.*``: ``expert_params_mapping`` detects the
``base_layer`` segment in the model's parameter names, as vLLM PR #37114 made it do (the bug was
a table hard-coded to ``experts.w13_``).  Override it to build that mutant.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from weightcheck.arch import Arch, Placement
from weightcheck.reference_models.reference_loader.layers import RMSNorm, ReplicatedLinear, layer_quant
from weightcheck.reference_models.reference_loader.llama import LlamaAttention, LlamaForCausalLM, LlamaMLP
from weightcheck.reference_models.reference_loader.moe import FusedMoE
from weightcheck.reference_models.reference_loader.tracking import LoadTracker, naming, tracker_for

# checkpoint projection of one expert -> MoE shard id
EXPERT_SHARDS = (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2"))
# fused 3-D checkpoint leaf -> the shards it holds, in row order along dim 1
FUSED_EXPERT_SHARDS = {"gate_up_proj": ("w1", "w3"), "down_proj": ("w2",)}


class Qwen3MoeAttention(LlamaAttention):
    def __init__(self, arch: Arch, placement: Placement, prefix: str = "") -> None:
        super().__init__(arch, placement, prefix=prefix)
        self.q_norm = RMSNorm(arch.head_dim, placement, arch.torch_dtype)
        self.k_norm = RMSNorm(arch.head_dim, placement, arch.torch_dtype)


class Qwen3MoeSparseMoeBlock(nn.Module):
    """``prefix``: the checkpoint module name ``model.layers.{i}.mlp``.  The router is never FP8;
    the experts are when their per-expert checkpoint modules are (all of them, or none)."""

    def __init__(self, arch: Arch, placement: Placement, prefix: str = "") -> None:
        super().__init__()
        moe, dtype = arch.moe, arch.torch_dtype
        self.gate = ReplicatedLinear(arch.hidden_size, moe.num_experts, False, placement, dtype)
        expert_modules = [
            f"{prefix}.experts.{e}.{proj}"
            for e in range(moe.num_experts)
            for proj, _ in EXPERT_SHARDS
        ]
        self.experts = FusedMoE(
            moe.num_experts, arch.hidden_size, moe.moe_intermediate_size, placement, dtype,
            quant=layer_quant(arch, expert_modules),
        )


class MoeDecoderLayer(nn.Module):
    def __init__(self, arch: Arch, placement: Placement, self_attn: nn.Module, mlp: nn.Module):
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.input_layernorm = RMSNorm(arch.hidden_size, placement, arch.torch_dtype)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, placement, arch.torch_dtype)


class Qwen3MoeForCausalLM(LlamaForCausalLM):
    # -- building ------------------------------------------------------------------------------

    def check_arch(self, arch: Arch) -> None:
        if arch.moe is None:
            raise ValueError(f"family {arch.family!r} needs arch.moe")
        if arch.moe.shared_expert_intermediate_size:
            raise ValueError(f"family {arch.family!r} has no shared expert")

    def make_attention(self, arch: Arch, placement: Placement, prefix: str = "") -> nn.Module:
        return Qwen3MoeAttention(arch, placement, prefix)

    def make_sparse_block(self, arch: Arch, placement: Placement, prefix: str = "") -> nn.Module:
        return Qwen3MoeSparseMoeBlock(arch, placement, prefix)

    def make_layer(self, arch: Arch, placement: Placement, index: int) -> nn.Module:
        prefix = f"model.layers.{index}"
        if arch.moe.is_moe_layer(index):
            mlp = self.make_sparse_block(arch, placement, f"{prefix}.mlp")
        else:  # dense layer: arch.intermediate_size
            mlp = LlamaMLP(arch, placement, prefix=f"{prefix}.mlp")
        attention = self.make_attention(arch, placement, f"{prefix}.self_attn")
        return MoeDecoderLayer(arch, placement, attention, mlp)

    # -- routing hooks: override one to build a mutant ------------------------------------------

    def expert_params_mapping(self) -> list[tuple[str, str, str, int]]:
        """``(param_name, weight_name, shard_id, expert_id)`` for every GLOBAL expert.

        ``param_name`` is the runtime prefix (``experts.w13_`` / ``experts.w2_``, with
        ``base_layer.`` when the experts are LoRA-wrapped, detected from the parameter names as
        in vLLM PR #37114); ``weight_name`` the checkpoint segment it replaces.
        """
        wrapped = any(".experts.base_layer." in name for name, _ in self.named_parameters())
        experts = "experts.base_layer." if wrapped else "experts."
        return [
            (experts + ("w2_" if shard_id == "w2" else "w13_"), f"experts.{e}.{proj}.", shard_id, e)
            for e in range(self.arch.moe.num_experts)
            for proj, shard_id in EXPERT_SHARDS
        ]

    def check_expert_id(self, name: str, expert_id: int) -> None:
        """An expert id past the model's last expert is an error, never "another rank's"."""
        if expert_id >= self.arch.moe.num_experts:
            raise ValueError(
                f"checkpoint tensor {name!r} names expert {expert_id}, but the model has "
                f"{self.arch.moe.num_experts} experts"
            )

    def load_fused_expert_weights(
        self,
        tracker: LoadTracker,
        name: str,
        target: str,
        loaded_weight: torch.Tensor,
        shard_ids: tuple[str, ...],
    ) -> None:
        """A fused 3-D ``[E, rows, cols]`` tensor: split ``rows`` into ``shard_ids`` (gate rows
        first), then load expert by expert with keyword ``shard_id``/``expert_id``."""
        num_experts = self.arch.moe.num_experts
        if loaded_weight.dim() != 3 or loaded_weight.shape[0] != num_experts:
            raise ValueError(
                f"{name}: fused expert tensor has shape {tuple(loaded_weight.shape)}, expected "
                f"[{num_experts}, rows, cols]"
            )
        rows = loaded_weight.shape[1]
        if rows % len(shard_ids):
            raise ValueError(f"{name}: {rows} rows do not split into {shard_ids}")
        pieces = loaded_weight.split(rows // len(shard_ids), dim=1)
        param = tracker.param(target, name)
        for expert_id in range(num_experts):
            for shard_id, piece in zip(shard_ids, pieces):
                success = param.weight_loader(
                    param, piece[expert_id], name,
                    shard_id=shard_id, expert_id=expert_id, return_success=True,
                )
                if success:
                    tracker.record(target, (expert_id, shard_id))

    # -------------------------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load a checkpoint stream; return the runtime names every shard of which was loaded.

        A fused expert parameter counts as loaded once every LOCAL expert's shards arrived;
        tensors of experts another ep rank holds are skipped (the weight loader says False).
        """
        tracker = tracker_for(self)
        mapping = self.expert_params_mapping()
        per_expert = {weight_name: (param, shard, e) for param, weight_name, shard, e in mapping}
        fused_params = {shard: param for param, _, shard, _ in mapping}
        for name, loaded_weight in weights:
            with naming(name):
                if self.is_skipped(name) or self.is_on_other_rank(name):
                    continue
                parts = name.split(".")
                if "experts" not in parts:
                    self.load_dense(tracker, name, loaded_weight)
                    continue
                i = parts.index("experts")
                rest = parts[i + 1:]
                if len(rest) == 1 and rest[0] in FUSED_EXPERT_SHARDS:
                    shard_ids = FUSED_EXPERT_SHARDS[rest[0]]
                    target = ".".join(parts[:i] + [fused_params[shard_ids[0]] + "weight"])
                    self.load_fused_expert_weights(tracker, name, target, loaded_weight, shard_ids)
                    continue
                if len(rest) >= 3 and rest[0].isdigit():
                    self.check_expert_id(name, int(rest[0]))
                    entry = per_expert.get(f"experts.{rest[0]}.{rest[1]}.")
                    if entry is not None:
                        param_name, shard_id, expert_id = entry
                        target = ".".join(parts[:i] + [param_name + ".".join(rest[2:])])
                        param = tracker.param(target, name)
                        success = param.weight_loader(
                            param, loaded_weight, name,
                            shard_id=shard_id, expert_id=expert_id, return_success=True,
                        )
                        if success:
                            tracker.record(target, (expert_id, shard_id))
                        continue
                raise ValueError(f"checkpoint tensor {name!r} matches no parameter of this model")
        return tracker.loaded()
