"""Quantisation formats as quant-method objects, in the shape of vLLM's ``LinearMethodBase`` /
``Fp8LinearMethod`` and ``FusedMoEMethodBase`` / ``Fp8MoEMethod``.

A layer holds its TP/EP geometry and its weight's own ``weight_loader``; everything that depends
on the checkpoint's format lives with the layer's ``quant_method``, picked once from the layer's
``Quant`` by ``get_quant_method``:

* ``create_weights(layer, ...)``: the weight parameter(s) in the format's dtype, plus the scale
  parameters, each with its ``weight_loader`` (the method's scale loader bound to the layer, as
  vLLM's ``PerTensorScaleParameter`` / ``BlockQuantScaleParameter`` carry theirs);
* the scale loaders themselves;
* ``dequantized_weight(layer)`` (MoE: ``dequantized_weights``) and, for linear layers,
  ``apply(layer, x, bias)``;
* ``process_weights_after_loading(layer)``;
* ``dequantize(weight, scale, dtype, what)``: a whole checkpoint weight with its checkpoint
  scale, for a model that dequantises at load (``deepseek_v32``'s indexer ``wk``).

So a new format is one new method class (and its MoE counterpart, if experts come in it) plus
its entry in ``FORMAT_METHODS``; no layer branches on ``quant.method``.

What a method reads from its layer (docs/runtime-layout.md, "FP8 quantisation"):

* linear (``layers.LinearBase``): ``dtype``, ``device``, ``shard_order`` (the logical shards in
  row order), ``row_pieces()`` (which rows of which checkpoint shard sit where on this rank) and
  ``col_piece()`` (which columns);
* MoE (``moe.FusedMoE``): ``dtype``, ``device``, ``hidden_size``, ``intermediate_size``,
  ``intermediate_size_per_partition``, ``moe_tp_rank``, ``local_expert_ids``, ``w13_shards``
  (gate "w1", up "w3", in row order), ``w2_shards`` (down "w2"), and
  ``expert_slot(param, pair, weight_name, shard_id, expert_id)``: the local slot of a GLOBAL
  expert (None when another ep rank holds it), after checking the parameter and the shard.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from torch import nn

from weightcheck.arch import Quant
from weightcheck.reference_models.reference_loader.parameters import (
    ceil_div,
    check_shape,
    new_parameter,
)

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
SCALE_DTYPE = torch.float32


def block_cover(start: int, size: int, block: int) -> tuple[int, int]:
    """(first block, number of blocks) of the blocks of ``block`` that cover ``[start, start+size)``.

    A piece cut through a block by the TP split still needs that whole block's scale, so two ranks
    may both hold it (docs/runtime-layout.md, the block-cover rule).
    """
    first = start // block
    return first, ceil_div(start + size, block) - first


def block_expand(scales: torch.Tensor, block: Sequence[int], rows: tuple[int, int], cols: tuple[int, int]):
    """The per-element scales of weight rows ``[a, a+n)`` and columns ``[c, c+k)`` of a checkpoint
    weight, from the covering scale blocks ``scales`` (whose first block is ``a // bn``, ``c // bk``)."""
    bn, bk = block
    (a, n), (c, k) = rows, cols
    full = scales.repeat_interleave(bn, 0).repeat_interleave(bk, 1)
    r0, c0 = a - (a // bn) * bn, c - (c // bk) * bk
    return full[r0 : r0 + n, c0 : c0 + k]


def _scale_parameter(layer, shape, loader, shard_ids) -> nn.Parameter:
    """A float32 scale parameter whose ``weight_loader`` is ``loader`` bound to ``layer``."""
    return new_parameter(shape, SCALE_DTYPE, layer.device, partial(loader, layer), shard_ids)


def _moe_result(success: bool, return_success: bool):
    """A MoE loader's answer: ``True``/``False`` when asked for it, else None (vLLM's contract)."""
    return success if return_success else None


class QuantMethod:
    """What every method shares: its ``Quant`` (None: not quantised), the dtype it holds weights
    in (None: the model dtype) and the checkpoint leaves of a quantised module's scales."""

    weight_dtype: torch.dtype | None = None
    weight_scale_name: str | None = None  # ``X.weight_scale`` / ``X.weight_scale_inv``
    input_scale_name: str | None = None  # ``X.input_scale`` (static activations only)

    def __init__(self, quant: Quant | None = None) -> None:
        self.quant = quant

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.quant!r})"

    def params_dtype(self, layer) -> torch.dtype:
        return layer.dtype if self.weight_dtype is None else self.weight_dtype

    def dequantize(
        self, weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype, what: str
    ) -> torch.Tensor:
        """A whole checkpoint weight ``[N, K]`` with its checkpoint scale, in ``dtype``: the
        document's dequantisation, exactly (float32 product, then one cast).  ``what``: the
        checkpoint module the two tensors belong to (``...indexer.wk``); an error names the
        checkpoint tensor that is wrong (``...indexer.wk.weight_scale_inv``)."""
        raise NotImplementedError

    def process_weights_after_loading(self, layer) -> None:
        """Repack ``layer`` for inference after loading; nothing by default."""


# --- linear layers ---------------------------------------------------------------------------


class LinearMethod(QuantMethod):
    """A linear layer's format: its weight ``[rows, cols]``, its scales, their dequantisation."""

    def create_weights(self, layer, rows: int, cols: int, shard_ids, weight_loader) -> None:
        """The weight (loaded by the layer's own ``weight_loader``), then the scales."""
        layer.weight = new_parameter(
            (rows, cols), self.params_dtype(layer), layer.device, weight_loader, shard_ids
        )
        self.create_scales(layer, shard_ids)

    def create_scales(self, layer, shard_ids) -> None:
        """The scale parameters; none by default."""

    def dequantized_weight(self, layer) -> torch.Tensor:
        """This rank's weight in the model dtype."""
        raise NotImplementedError

    @torch.no_grad()
    def apply(self, layer, x: torch.Tensor, bias: nn.Parameter | None = None) -> torch.Tensor:
        """``x @ W.T (+ bias)`` in float32 from the dequantised weight; ``x`` is ``[B, K_local]``."""
        weight = self.dequantized_weight(layer).float().to(x.device)
        out = x.float() @ weight.t()
        if bias is not None:
            out = out + bias.data.float().to(x.device)
        return out


class UnquantizedLinearMethod(LinearMethod):
    """The weight in the model dtype, no scales."""

    @torch.no_grad()
    def dequantized_weight(self, layer) -> torch.Tensor:
        return layer.weight.data.to(layer.dtype)

    def dequantize(self, weight, scale, dtype, what):
        if scale is not None:
            raise ValueError(f"{what}.weight: an unquantised weight has no scale")
        return weight.to(dtype)


class Fp8PerTensorLinearMethod(LinearMethod):
    """FP8 weight; ``weight_scale`` (and with static activations ``input_scale``) not sharded:
    one entry per logical shard of the layer, in shard order, on every rank."""

    weight_dtype = FP8
    weight_scale_name = "weight_scale"

    def __init__(self, quant: Quant) -> None:
        super().__init__(quant)
        if quant.activation_scheme == "static":
            self.input_scale_name = "input_scale"

    def create_scales(self, layer, shard_ids) -> None:
        shape = (len(layer.shard_order),)
        layer.weight_scale = _scale_parameter(layer, shape, self.weight_scale_loader, shard_ids)
        if self.input_scale_name is not None:
            layer.input_scale = _scale_parameter(layer, shape, self.input_scale_loader, shard_ids)

    @staticmethod
    def _entry(layer, shard_id) -> int:
        """The entry of logical shard ``shard_id`` in the layer's per-shard scales."""
        if shard_id not in layer.shard_order:
            raise ValueError(f"{type(layer).__name__} has no scale for shard {shard_id!r}")
        return layer.shard_order.index(shard_id)

    @torch.no_grad()
    def weight_scale_loader(self, layer, param, loaded_weight, loaded_shard_id=None) -> None:
        """A per-tensor scale ``[]``: not sharded, it lands in its shard's entry on every rank."""
        if loaded_weight.numel() != 1:
            raise ValueError(
                f"per-tensor scale: checkpoint tensor has shape {tuple(loaded_weight.shape)}, "
                "expected []"
            )
        param.data[self._entry(layer, loaded_shard_id)].copy_(loaded_weight.reshape(()))

    input_scale_loader = weight_scale_loader

    @torch.no_grad()
    def dequantized_weight(self, layer) -> torch.Tensor:
        out = layer.weight.data.float()
        scale = layer.weight_scale.data.float().reshape(-1)
        for piece in layer.row_pieces():
            rows = slice(piece.offset, piece.offset + piece.size)
            out[rows] = out[rows] * scale[self._entry(layer, piece.shard)]
        return out.to(layer.dtype)

    def dequantize(self, weight, scale, dtype, what):
        if scale.numel() != 1:
            raise ValueError(
                f"{what}.{self.weight_scale_name}: per-tensor scale has shape {tuple(scale.shape)}, expected []"
            )
        return (weight.float() * scale.float().reshape(())).to(dtype)

    @torch.no_grad()
    def process_weights_after_loading(self, layer) -> None:
        """vLLM's FP8 post-processing: a fused layer is requantised to the max of its shard
        scales, every shard's scale (and input scale) set to that max.  In place: the same
        parameters, storage and ``weight_loader``s stay, so a second load (weight sync) writes
        through them and processing again gives what a fresh load would (idempotent)."""
        if len(layer.shard_order) < 2:
            return
        scales = layer.weight_scale.data.float()
        max_scale = scales.max()
        weight = layer.weight.data
        for piece in layer.row_pieces():
            rows = slice(piece.offset, piece.offset + piece.size)
            dq = weight[rows].float() * scales[self._entry(layer, piece.shard)]
            weight[rows] = (dq / max_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        layer.weight_scale.data.fill_(max_scale)
        if getattr(layer, "input_scale", None) is not None:
            layer.input_scale.data.fill_(layer.input_scale.data.max())


class Fp8BlockLinearMethod(LinearMethod):
    """FP8 weight; ``weight_scale_inv`` per block ``[bn, bk]``, held by the block-cover rule: the
    blocks covering each row piece of this rank, stacked in shard order."""

    weight_dtype = FP8
    weight_scale_name = "weight_scale_inv"

    def create_scales(self, layer, shard_ids) -> None:
        bn, bk = self.quant.block
        block_rows = sum(block_cover(p.start, p.size, bn)[1] for p in layer.row_pieces())
        col = layer.col_piece()
        layer.weight_scale_inv = _scale_parameter(
            layer, (block_rows, block_cover(col.start, col.size, bk)[1]), self.block_scale_loader,
            shard_ids,
        )

    @torch.no_grad()
    def block_scale_loader(self, layer, param, loaded_weight, loaded_shard_id=None) -> None:
        """``weight_scale_inv`` ``[ceil(N/bn), ceil(K/bk)]``: this rank keeps the blocks that
        cover its piece of the weight, stacked in shard order."""
        bn, bk = self.quant.block
        col = layer.col_piece()
        offset = 0
        for piece in layer.row_pieces():
            r0, nr = block_cover(piece.start, piece.size, bn)
            if piece.shard == loaded_shard_id:
                check_shape(
                    loaded_weight, (ceil_div(piece.full, bn), ceil_div(col.full, bk)),
                    f"block scale of shard {loaded_shard_id!r}",
                )
                c0, nc = block_cover(col.start, col.size, bk)
                param.data.narrow(0, offset, nr).copy_(loaded_weight[r0 : r0 + nr, c0 : c0 + nc])
                return
            offset += nr
        raise ValueError(f"{type(layer).__name__} has no block scale for shard {loaded_shard_id!r}")

    @torch.no_grad()
    def dequantized_weight(self, layer) -> torch.Tensor:
        out = layer.weight.data.float()
        col = layer.col_piece()
        bn, _ = self.quant.block
        offset = 0
        for piece in layer.row_pieces():
            _, nr = block_cover(piece.start, piece.size, bn)
            scales = layer.weight_scale_inv.data[offset : offset + nr].float()
            rows = slice(piece.offset, piece.offset + piece.size)
            out[rows] = out[rows] * block_expand(
                scales, self.quant.block, (piece.start, piece.size), (col.start, col.size)
            )
            offset += nr
        return out.to(layer.dtype)

    def dequantize(self, weight, scale, dtype, what):
        n, k = weight.shape
        bn, bk = self.quant.block
        check_shape(scale, (ceil_div(n, bn), ceil_div(k, bk)), f"{what}.{self.weight_scale_name}")
        expanded = block_expand(scale.float(), self.quant.block, (0, n), (0, k))
        return (weight.float() * expanded).to(dtype)


# --- fused MoE experts -----------------------------------------------------------------------


class MoEMethod(QuantMethod):
    """The experts' format: ``w13_weight`` ``[E_local, 2*Ip, H]`` and ``w2_weight``
    ``[E_local, H, Ip]``, their scales, their dequantisation.  Every scale loader has the MoE
    weight loader's signature (keyword-only ``shard_id`` and GLOBAL ``expert_id``)."""

    def create_weights(
        self, layer, num_local_experts: int, hidden_size: int, intermediate_size_per_partition: int,
        w13_ids, w2_ids, weight_loader,
    ) -> None:
        n, h, ip = num_local_experts, hidden_size, intermediate_size_per_partition
        dtype = self.params_dtype(layer)
        device = layer.device
        layer.w13_weight = new_parameter((n, 2 * ip, h), dtype, device, weight_loader, w13_ids)
        layer.w2_weight = new_parameter((n, h, ip), dtype, device, weight_loader, w2_ids)
        self.create_scales(layer, w13_ids, w2_ids)

    def create_scales(self, layer, w13_ids, w2_ids) -> None:
        """The scale parameters; none by default."""

    def dequantized_weights(self, layer) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w13, w2)`` of the local experts in the model dtype."""
        raise NotImplementedError


class UnquantizedMoEMethod(MoEMethod):
    @torch.no_grad()
    def dequantized_weights(self, layer) -> tuple[torch.Tensor, torch.Tensor]:
        return layer.w13_weight.data.to(layer.dtype), layer.w2_weight.data.to(layer.dtype)


class Fp8PerTensorMoEMethod(MoEMethod):
    """Per-tensor ``w13_weight_scale`` ``[E_local, 2]`` (gate, up), ``w2_weight_scale``
    ``[E_local]``; static ``w13_input_scale`` / ``w2_input_scale`` ``[E_local]`` (gate's and up's
    input scales are equal: either writes the slot, tracking waits for both)."""

    weight_dtype = FP8
    weight_scale_name = "weight_scale"

    def __init__(self, quant: Quant) -> None:
        super().__init__(quant)
        if quant.activation_scheme == "static":
            self.input_scale_name = "input_scale"

    def create_scales(self, layer, w13_ids, w2_ids) -> None:
        n = len(layer.local_expert_ids)
        layer.w13_weight_scale = _scale_parameter(layer, (n, 2), self.weight_scale_loader, w13_ids)
        layer.w2_weight_scale = _scale_parameter(layer, (n,), self.weight_scale_loader, w2_ids)
        if self.input_scale_name is not None:
            layer.w13_input_scale = _scale_parameter(layer, (n,), self.input_scale_loader, w13_ids)
            layer.w2_input_scale = _scale_parameter(layer, (n,), self.input_scale_loader, w2_ids)

    @torch.no_grad()
    def weight_scale_loader(
        self, layer, param, loaded_weight, weight_name, *, shard_id, expert_id, return_success=False
    ):
        """A per-tensor weight scale ``[]`` of one GLOBAL expert's gate, up or down."""
        pair = (getattr(layer, "w13_weight_scale", None), getattr(layer, "w2_weight_scale", None))
        local = layer.expert_slot(param, pair, weight_name, shard_id, expert_id)
        if local is None:
            return _moe_result(False, return_success)
        if loaded_weight.numel() != 1:
            raise ValueError(f"{weight_name}: per-tensor scale has shape {tuple(loaded_weight.shape)}")
        if shard_id in layer.w2_shards:
            param.data[local].copy_(loaded_weight.reshape(()))
        else:
            param.data[local, layer.w13_shards.index(shard_id)].copy_(loaded_weight.reshape(()))
        return _moe_result(True, return_success)

    @torch.no_grad()
    def input_scale_loader(
        self, layer, param, loaded_weight, weight_name, *, shard_id, expert_id, return_success=False
    ):
        """A static input scale ``[]``: gate's and up's are the same one (w1 and w3 share it)."""
        pair = (getattr(layer, "w13_input_scale", None), getattr(layer, "w2_input_scale", None))
        local = layer.expert_slot(param, pair, weight_name, shard_id, expert_id)
        if local is None:
            return _moe_result(False, return_success)
        if loaded_weight.numel() != 1:
            raise ValueError(f"{weight_name}: input scale has shape {tuple(loaded_weight.shape)}")
        param.data[local].copy_(loaded_weight.reshape(()))
        return _moe_result(True, return_success)

    @torch.no_grad()
    def dequantized_weights(self, layer) -> tuple[torch.Tensor, torch.Tensor]:
        w13, w2 = layer.w13_weight.data.float(), layer.w2_weight.data.float()
        ip = layer.intermediate_size_per_partition
        s13 = layer.w13_weight_scale.data.float()
        w13[:, :ip] *= s13[:, 0, None, None]
        w13[:, ip:] *= s13[:, 1, None, None]
        w2 = w2 * layer.w2_weight_scale.data.float().reshape(-1, 1, 1)
        return w13.to(layer.dtype), w2.to(layer.dtype)

    @torch.no_grad()
    def process_weights_after_loading(self, layer) -> None:
        """vLLM's per-tensor FP8 MoE post-processing: each expert's gate and up requantised to the
        max of their two scales (both set to it), input scales set to their max.  In place, like
        the linear layers' (a second load and processing equal a fresh load and processing)."""
        scales = layer.w13_weight_scale.data.float()
        max_scales = scales.max(dim=1).values
        ip = layer.intermediate_size_per_partition
        w = layer.w13_weight.data
        for j in range(w.shape[0]):
            for k, rows in enumerate((slice(0, ip), slice(ip, 2 * ip))):
                dq = w[j, rows].float() * scales[j, k]
                w[j, rows] = (dq / max_scales[j]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        layer.w13_weight_scale.data.copy_(max_scales[:, None].expand_as(layer.w13_weight_scale))
        for name in ("w13_input_scale", "w2_input_scale"):
            scale = getattr(layer, name, None)
            if scale is not None and scale.numel():
                scale.data.fill_(scale.data.max())


class Fp8BlockMoEMethod(MoEMethod):
    """Block ``w13_weight_scale_inv`` ``[E_local, gate's + up's covering block rows, ceil(H/bk)]``
    and ``w2_weight_scale_inv`` ``[E_local, ceil(H/bn), covering block columns]``."""

    weight_dtype = FP8
    weight_scale_name = "weight_scale_inv"

    def create_scales(self, layer, w13_ids, w2_ids) -> None:
        bn, bk = self.quant.block
        n_local, h = len(layer.local_expert_ids), layer.hidden_size
        ip = layer.intermediate_size_per_partition
        start = layer.moe_tp_rank * ip
        inter_blocks = block_cover(start, ip, bn)[1]  # gate's (= up's) covering rows
        layer.w13_weight_scale_inv = _scale_parameter(
            layer, (n_local, 2 * inter_blocks, ceil_div(h, bk)), self.block_scale_loader, w13_ids
        )
        layer.w2_weight_scale_inv = _scale_parameter(
            layer, (n_local, ceil_div(h, bn), block_cover(start, ip, bk)[1]),
            self.block_scale_loader, w2_ids,
        )

    @torch.no_grad()
    def block_scale_loader(
        self, layer, param, loaded_weight, weight_name, *, shard_id, expert_id, return_success=False
    ):
        """``weight_scale_inv`` of one GLOBAL expert's gate, up or down, by block cover."""
        pair = (
            getattr(layer, "w13_weight_scale_inv", None), getattr(layer, "w2_weight_scale_inv", None)
        )
        local = layer.expert_slot(param, pair, weight_name, shard_id, expert_id)
        if local is None:
            return _moe_result(False, return_success)
        bn, bk = self.quant.block
        im, h = layer.intermediate_size, layer.hidden_size
        size = layer.intermediate_size_per_partition
        start = layer.moe_tp_rank * size
        if shard_id in layer.w2_shards:
            check_shape(loaded_weight, (ceil_div(h, bn), ceil_div(im, bk)), f"{weight_name} (w2)")
            c0, nc = block_cover(start, size, bk)
            param.data[local].copy_(loaded_weight[:, c0 : c0 + nc])
        else:
            check_shape(
                loaded_weight, (ceil_div(im, bn), ceil_div(h, bk)), f"{weight_name} ({shard_id})"
            )
            r0, nr = block_cover(start, size, bn)
            offset = layer.w13_shards.index(shard_id) * nr
            param.data[local].narrow(0, offset, nr).copy_(loaded_weight[r0 : r0 + nr])
        return _moe_result(True, return_success)

    @torch.no_grad()
    def dequantized_weights(self, layer) -> tuple[torch.Tensor, torch.Tensor]:
        w13, w2 = layer.w13_weight.data.float(), layer.w2_weight.data.float()
        ip = layer.intermediate_size_per_partition
        bn, _ = self.quant.block
        start = layer.moe_tp_rank * ip
        _, nr = block_cover(start, ip, bn)
        h = layer.hidden_size
        for j in range(w13.shape[0]):
            s = layer.w13_weight_scale_inv.data[j].float()
            w13[j, :ip] *= block_expand(s[:nr], self.quant.block, (start, ip), (0, h))
            w13[j, ip:] *= block_expand(s[nr:], self.quant.block, (start, ip), (0, h))
            s2 = layer.w2_weight_scale_inv.data[j].float()
            w2[j] *= block_expand(s2, self.quant.block, (0, h), (start, ip))
        return w13.to(layer.dtype), w2.to(layer.dtype)


# --- picking the method ----------------------------------------------------------------------

# format (``Quant.method``; None: not quantised) -> (its linear method, its MoE method or None).
# A new format is one entry here and its method class(es) above.
FORMAT_METHODS: dict[str | None, tuple[type[LinearMethod], type[MoEMethod] | None]] = {
    None: (UnquantizedLinearMethod, UnquantizedMoEMethod),
    "fp8_per_tensor": (Fp8PerTensorLinearMethod, Fp8PerTensorMoEMethod),
    "fp8_block": (Fp8BlockLinearMethod, Fp8BlockMoEMethod),
}


def get_quant_method(quant: Quant | None, *, moe: bool = False) -> QuantMethod:
    """The method a layer built with ``quant`` delegates its format to: a ``LinearMethod``, or
    with ``moe=True`` a ``MoEMethod`` (vLLM's ``QuantizationConfig.get_quant_method``)."""
    fmt = None if quant is None else quant.method
    if fmt not in FORMAT_METHODS:
        known = sorted(map(str, FORMAT_METHODS))
        raise ValueError(f"no quant method for format {fmt!r}; known: {known}")
    linear, experts = FORMAT_METHODS[fmt]
    if moe and experts is None:
        raise ValueError(f"format {fmt!r} has no MoE method: its experts cannot be quantised")
    return (experts if moe else linear)(quant)
