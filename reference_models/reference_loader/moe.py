"""The fused mixture-of-experts layer, in vLLM's style: two 3-D parameters for all local experts.

``w13_weight`` ``[E_local, 2*Im/Tm, H]`` holds, per local expert, its gate rows ("w1") then its
up rows ("w3"); ``w2_weight`` ``[E_local, H, Im/Tm]`` its down projection ("w2").  Without
expert parallel every rank holds every expert, sharded over tensor parallel (``Tm = tp_size``);
with ``ep_size > 1`` each rank holds a subset of the experts, whole (``Tm = 1``).

Both parameters share one ``weight_loader(param, loaded_weight, weight_name, *, shard_id,
expert_id, return_success=False)`` whose ``shard_id`` and GLOBAL ``expert_id`` are keyword-only,
as vLLM's ``FusedMoE.weight_loader`` must be called (seed PR #42716: a wrapper that passed them
positionally dropped them).  A non-local expert writes nothing and reports ``False``.

FP8 (``quant``): the weights are ``float8_e4m3fn`` and the scales are parameters of their own,
each with a loader of the same keyword-only signature: per-tensor ``w13_weight_scale``
``[E_local, 2]`` (gate, up), ``w2_weight_scale`` ``[E_local]``, static ``w13_input_scale`` /
``w2_input_scale`` ``[E_local]`` (gate's and up's input scales are equal: either writes the slot,
tracking waits for both); block ``w13_weight_scale_inv`` / ``w2_weight_scale_inv`` by block cover.
"""

from __future__ import annotations

import torch
from torch import nn

from weightcheck.arch import EXPERT_PLACEMENTS, Placement, Quant
from weightcheck.reference_models.reference_loader.layers import (
    FP8,
    FP8_MAX,
    SCALE_DTYPE,
    _TPLayer,
    block_cover,
    block_expand,
    ceil_div,
    check_shape,
    divide,
    new_parameter,
)

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
        n_local, ip = len(self.local_expert_ids), self.intermediate_size_per_partition
        self.quant = quant
        w13_ids = tuple((g, s) for g in self.local_expert_ids for s in W13_SHARDS)
        w2_ids = tuple((g, s) for g in self.local_expert_ids for s in W2_SHARDS)
        weight_dtype = FP8 if quant is not None else dtype
        self.w13_weight = new_parameter(
            (n_local, 2 * ip, hidden_size), weight_dtype, self.device, self.weight_loader, w13_ids
        )
        self.w2_weight = new_parameter(
            (n_local, hidden_size, ip), weight_dtype, self.device, self.weight_loader, w2_ids
        )
        if quant is not None and quant.method == "fp8_per_tensor":
            self.w13_weight_scale = self._scale((n_local, 2), self.scale_loader, w13_ids)
            self.w2_weight_scale = self._scale((n_local,), self.scale_loader, w2_ids)
            if quant.activation_scheme == "static":
                self.w13_input_scale = self._scale((n_local,), self.input_scale_loader, w13_ids)
                self.w2_input_scale = self._scale((n_local,), self.input_scale_loader, w2_ids)
        elif quant is not None:
            bn, bk = quant.block
            start = self.moe_tp_rank * ip
            inter_blocks = block_cover(start, ip, bn)[1]  # gate's (= up's) covering rows
            self.w13_weight_scale_inv = self._scale(
                (n_local, 2 * inter_blocks, ceil_div(hidden_size, bk)), self.block_scale_loader,
                w13_ids,
            )
            self.w2_weight_scale_inv = self._scale(
                (n_local, ceil_div(hidden_size, bn), block_cover(start, ip, bk)[1]),
                self.block_scale_loader, w2_ids,
            )

    def _scale(self, shape, loader, shard_ids) -> nn.Parameter:
        return new_parameter(shape, SCALE_DTYPE, self.device, loader, shard_ids)

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

    @torch.no_grad()
    def scale_loader(
        self, param, loaded_weight, weight_name, *, shard_id, expert_id, return_success=False
    ):
        """A per-tensor weight scale ``[]`` of one GLOBAL expert's gate, up or down."""
        allowed = self._allowed(
            param, getattr(self, "w13_weight_scale", None), getattr(self, "w2_weight_scale", None),
            weight_name,
        )
        local = self._check_expert(weight_name, shard_id, expert_id, allowed)
        if local is None:
            return False if return_success else None
        if loaded_weight.numel() != 1:
            raise ValueError(f"{weight_name}: per-tensor scale has shape {tuple(loaded_weight.shape)}")
        if shard_id == "w2":
            param.data[local].copy_(loaded_weight.reshape(()))
        else:
            param.data[local, W13_SHARDS.index(shard_id)].copy_(loaded_weight.reshape(()))
        return True if return_success else None

    @torch.no_grad()
    def input_scale_loader(
        self, param, loaded_weight, weight_name, *, shard_id, expert_id, return_success=False
    ):
        """A static input scale ``[]``: gate's and up's are the same one (w1 and w3 share it)."""
        allowed = self._allowed(
            param, getattr(self, "w13_input_scale", None), getattr(self, "w2_input_scale", None),
            weight_name,
        )
        local = self._check_expert(weight_name, shard_id, expert_id, allowed)
        if local is None:
            return False if return_success else None
        if loaded_weight.numel() != 1:
            raise ValueError(f"{weight_name}: input scale has shape {tuple(loaded_weight.shape)}")
        param.data[local].copy_(loaded_weight.reshape(()))
        return True if return_success else None

    @torch.no_grad()
    def block_scale_loader(
        self, param, loaded_weight, weight_name, *, shard_id, expert_id, return_success=False
    ):
        """``weight_scale_inv`` of one GLOBAL expert's gate, up or down, by block cover."""
        allowed = self._allowed(
            param, getattr(self, "w13_weight_scale_inv", None),
            getattr(self, "w2_weight_scale_inv", None), weight_name,
        )
        local = self._check_expert(weight_name, shard_id, expert_id, allowed)
        if local is None:
            return False if return_success else None
        bn, bk = self.quant.block
        im, h = self.intermediate_size, self.hidden_size
        size = self.intermediate_size_per_partition
        start = self.moe_tp_rank * size
        if shard_id == "w2":
            check_shape(loaded_weight, (ceil_div(h, bn), ceil_div(im, bk)), f"{weight_name} (w2)")
            c0, nc = block_cover(start, size, bk)
            param.data[local].copy_(loaded_weight[:, c0 : c0 + nc])
        else:
            check_shape(
                loaded_weight, (ceil_div(im, bn), ceil_div(h, bk)), f"{weight_name} ({shard_id})"
            )
            r0, nr = block_cover(start, size, bn)
            offset = 0 if shard_id == "w1" else nr
            param.data[local].narrow(0, offset, nr).copy_(loaded_weight[r0 : r0 + nr])
        return True if return_success else None

    # -- inference-side views ------------------------------------------------------------------

    @torch.no_grad()
    def dequantized_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w13, w2)`` of the local experts in the model dtype, FP8 dequantised."""
        w13, w2 = self.w13_weight.data, self.w2_weight.data
        if self.quant is None:
            return w13.to(self.dtype), w2.to(self.dtype)
        w13, w2 = w13.float(), w2.float()
        ip = self.intermediate_size_per_partition
        if self.quant.method == "fp8_per_tensor":
            s13 = self.w13_weight_scale.data.float()
            if s13.dim() == 1:  # one scale per expert after process_weights_after_loading
                w13 = w13 * s13[:, None, None]
            else:
                w13[:, :ip] *= s13[:, 0, None, None]
                w13[:, ip:] *= s13[:, 1, None, None]
            w2 = w2 * self.w2_weight_scale.data.float().reshape(-1, 1, 1)
            return w13.to(self.dtype), w2.to(self.dtype)
        bn, _ = self.quant.block
        start = self.moe_tp_rank * ip
        _, nr = block_cover(start, ip, bn)
        h = self.hidden_size
        for j in range(w13.shape[0]):
            s = self.w13_weight_scale_inv.data[j].float()
            w13[j, :ip] *= block_expand(s[:nr], self.quant.block, (start, ip), (0, h))
            w13[j, ip:] *= block_expand(s[nr:], self.quant.block, (start, ip), (0, h))
            s2 = self.w2_weight_scale_inv.data[j].float()
            w2[j] *= block_expand(s2, self.quant.block, (0, h), (start, ip))
        return w13.to(self.dtype), w2.to(self.dtype)

    @torch.no_grad()
    def process_weights_after_loading(self) -> None:
        """vLLM's per-tensor FP8 MoE post-processing: each expert's gate and up requantised to the
        max of their two scales (one scale per expert), input scales reduced to their max."""
        if self.quant is None or self.quant.method != "fp8_per_tensor":
            return
        if self.w13_weight_scale.dim() == 2:
            scales = self.w13_weight_scale.data.float()
            max_scales = scales.max(dim=1).values
            ip = self.intermediate_size_per_partition
            w = self.w13_weight.data
            for j in range(w.shape[0]):
                for k, rows in enumerate((slice(0, ip), slice(ip, 2 * ip))):
                    dq = w[j, rows].float() * scales[j, k]
                    w[j, rows] = (dq / max_scales[j]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
            self.w13_weight_scale = nn.Parameter(max_scales.clone(), requires_grad=False)
        for name in ("w13_input_scale", "w2_input_scale"):
            scale = getattr(self, name, None)
            if scale is not None and scale.dim() > 0:
                setattr(self, name, nn.Parameter(scale.data.max().clone(), requires_grad=False))

    @torch.no_grad()
    def weight_loader(
        self, param, loaded_weight, weight_name, *, shard_id, expert_id, return_success=False
    ):
        """Load one checkpoint matrix of one GLOBAL expert; ``False`` if it is not held here."""
        allowed = self._allowed(param, self.w13_weight, self.w2_weight, weight_name)
        local = self._check_expert(weight_name, shard_id, expert_id, allowed)
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
