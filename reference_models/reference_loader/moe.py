"""The fused mixture-of-experts layer, in vLLM's style: two 3-D parameters for all local experts.

``w13_weight`` ``[E_local, 2*Im/Tm, H]`` holds, per local expert, its gate rows ("w1") then its
up rows ("w3"); ``w2_weight`` ``[E_local, H, Im/Tm]`` its down projection ("w2").  Without
expert parallel every rank holds every expert, sharded over tensor parallel (``Tm = tp_size``);
with ``ep_size > 1`` each rank holds a subset of the experts, whole (``Tm = 1``).

Both parameters share one ``weight_loader(param, loaded_weight, weight_name, *, shard_id,
expert_id, return_success=False)`` whose ``shard_id`` and GLOBAL ``expert_id`` are keyword-only,
as vLLM's ``FusedMoE.weight_loader`` must be called (seed PR #42716: a wrapper that passed them
positionally dropped them).  A non-local expert writes nothing and reports ``False``.

Quantisation (``quant``): the layer keeps the expert geometry (local experts, the expert map,
the TP split of the intermediate size) and the weights' own loader; the weights' dtype, the
scale parameters (each with a loader of the same keyword-only signature), dequantisation and
post-processing are its ``quant_method``'s (``quant.py``: ``Fp8PerTensorMoEMethod``,
``Fp8BlockMoEMethod``), as vLLM's ``FusedMoE`` delegates to its ``FusedMoEMethodBase``.
"""

from __future__ import annotations

import torch

from weightcheck.arch import EXPERT_PLACEMENTS, Placement, Quant
from weightcheck.reference_models.reference_loader.layers import _TPLayer
from weightcheck.reference_models.reference_loader.parameters import check_shape, divide
from weightcheck.reference_models.reference_loader.quant import MoEMethod, get_quant_method

W13_SHARDS = ("w1", "w3")
W2_SHARDS = ("w2",)


def local_experts(num_experts: int, ep_size: int, ep_rank: int, placement: str) -> tuple[int, ...]:
    """The global ids of the experts ep rank ``ep_rank`` holds, in increasing order.

    ``linear``: contiguous blocks of ``E // ep_size`` experts, the ``E % ep_size`` left over going
    one each to the first ranks.  ``round_robin``: every ``ep_size``-th expert from ``ep_rank``.
    """
    if ep_size < 1 or not 0 <= ep_rank < ep_size:
        raise ValueError(f"ep rank {ep_rank} outside ep size {ep_size}")
    if ep_size > num_experts:
        raise ValueError(f"ep_size {ep_size} exceeds the {num_experts} experts")
    if placement == "linear":
        base, extra = divmod(num_experts, ep_size)
        start = ep_rank * base + min(ep_rank, extra)
        count = base + (1 if ep_rank < extra else 0)
        return tuple(range(start, start + count))
    if placement == "round_robin":
        return tuple(range(ep_rank, num_experts, ep_size))
    raise ValueError(f"expert placement {placement!r} is not one of {EXPERT_PLACEMENTS}")


class FusedMoE(_TPLayer):
    w13_shards = W13_SHARDS  # gate, up: the rows of w13 in this order
    w2_shards = W2_SHARDS

    def __init__(
        self, num_experts: int, hidden_size: int, intermediate_size: int,
        placement: Placement, dtype: torch.dtype, *, quant: Quant | None = None,
    ) -> None:
        super().__init__(placement, dtype)
        self.num_experts = num_experts
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.ep_size, self.ep_rank = placement.ep_size, placement.ep_rank
        if self.ep_size > 1:  # experts are held whole on their ep rank
            self.moe_tp_size, self.moe_tp_rank = 1, 0
        else:
            self.moe_tp_size, self.moe_tp_rank = self.tp_size, self.tp_rank
        self.local_expert_ids = local_experts(
            num_experts, self.ep_size, self.ep_rank, placement.expert_placement
        )
        self.expert_map = {g: j for j, g in enumerate(self.local_expert_ids)}
        self.intermediate_size_per_partition = divide(
            intermediate_size, self.moe_tp_size, "expert intermediate size per rank"
        )
        self.quant_method: MoEMethod = get_quant_method(quant, moe=True)
        w13_ids = tuple((g, s) for g in self.local_expert_ids for s in W13_SHARDS)
        w2_ids = tuple((g, s) for g in self.local_expert_ids for s in W2_SHARDS)
        self.quant_method.create_weights(
            self, len(self.local_expert_ids), hidden_size, self.intermediate_size_per_partition,
            w13_ids, w2_ids, self.weight_loader,
        )

    @property
    def quant(self) -> Quant | None:
        return self.quant_method.quant

    def _check_expert(self, weight_name, shard_id, expert_id, allowed) -> int | None:
        """The local slot of GLOBAL ``expert_id`` (None when another ep rank holds it)."""
        if shard_id not in allowed:
            raise ValueError(f"{weight_name}: shard {shard_id!r} does not load into this parameter")
        if isinstance(expert_id, bool) or not isinstance(expert_id, int):
            raise ValueError(f"{weight_name}: expert_id must be an int, got {expert_id!r}")
        if not 0 <= expert_id < self.num_experts:
            raise ValueError(
                f"{weight_name}: expert {expert_id} outside the {self.num_experts} experts"
            )
        return self.expert_map.get(expert_id)

    def _allowed(self, param, w13, w2, weight_name) -> tuple[str, ...]:
        if w13 is not None and param is w13:
            return W13_SHARDS
        if w2 is not None and param is w2:
            return W2_SHARDS
        raise ValueError(f"{weight_name}: not a parameter of this MoE layer")

    def expert_slot(self, param, pair, weight_name, shard_id, expert_id) -> int | None:
        """The local slot of GLOBAL ``expert_id`` for a tensor loaded into ``param``, which must be
        one of ``pair`` (its w13 and w2 parameters); None when another ep rank holds the expert."""
        allowed = self._allowed(param, *pair, weight_name)
        return self._check_expert(weight_name, shard_id, expert_id, allowed)

    # -- inference-side views (the quant method's) ----------------------------------------------

    @torch.no_grad()
    def dequantized_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w13, w2)`` of the local experts in the model dtype, FP8 dequantised."""
        return self.quant_method.dequantized_weights(self)

    @torch.no_grad()
    def process_weights_after_loading(self) -> None:
        """The quant method's post-processing (FP8 per-tensor: one w13 scale per expert)."""
        self.quant_method.process_weights_after_loading(self)

    @torch.no_grad()
    def weight_loader(
        self, param, loaded_weight, weight_name, *, shard_id, expert_id, return_success=False
    ):
        """Load one checkpoint matrix of one GLOBAL expert; ``False`` if it is not held here."""
        pair = (self.w13_weight, self.w2_weight)
        local = self.expert_slot(param, pair, weight_name, shard_id, expert_id)
        if local is None:
            return False if return_success else None
        im, h = self.intermediate_size, self.hidden_size
        size = self.intermediate_size_per_partition
        start = self.moe_tp_rank * size
        if shard_id == "w2":
            check_shape(loaded_weight, (h, im), f"{weight_name} (expert {expert_id} w2)")
            param.data[local].copy_(loaded_weight.narrow(1, start, size))
        else:
            check_shape(loaded_weight, (im, h), f"{weight_name} (expert {expert_id} {shard_id})")
            offset = 0 if shard_id == "w1" else size
            param.data[local].narrow(0, offset, size).copy_(loaded_weight.narrow(0, start, size))
        return True if return_success else None
