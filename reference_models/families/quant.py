"""FP8 linear layers for every family: their checkpoint tensors, scale rules and config.

A family describes a linear layer once (checkpoint module, weight shape, runtime weight rule)
and these helpers add what quantisation brings: the FP8 weight dtype, ``weight_scale`` /
``input_scale`` / ``weight_scale_inv`` tensors, and the runtime scale parameters derived from
the weight's own rule (docs/runtime-layout.md, "FP8 quantisation").  Modules the arch leaves
unquantised (``Arch.fp8``) come back unchanged.
"""

from __future__ import annotations

from typing import Any, Sequence

from .rules import BlockScales, InDtype, ShardScales
from .base import TensorSpec

FP8 = "float8_e4m3fn"
SCALE = "float32"


def linear_checkpoint(
    arch, module: str, shape: tuple[int, int], *, bias: bool = False, input_scale_of: str | None = None
) -> dict[str, TensorSpec]:
    """``module.weight`` (+ bias) and, when FP8, its scales.

    ``input_scale_of``: this module's static input scale must equal that module's (the gate
    and up projections of one expert share it in vLLM's contract).
    """
    out = {}
    if not arch.fp8(module):
        out[module + ".weight"] = TensorSpec(shape)
    else:
        out[module + ".weight"] = TensorSpec(shape, dtype=FP8)
        q = arch.quant
        if q.method == "fp8_block":
            bn, bk = q.block
            blocks = (-(-shape[0] // bn), -(-shape[1] // bk))
            out[module + ".weight_scale_inv"] = TensorSpec(blocks, dtype=SCALE, fill="scale")
        else:
            out[module + ".weight_scale"] = TensorSpec((), dtype=SCALE, fill="scale")
            if q.activation_scheme == "static":
                fill = f"copy:{input_scale_of}.input_scale" if input_scale_of else "scale"
                out[module + ".input_scale"] = TensorSpec((), dtype=SCALE, fill=fill)
    if bias:
        out[module + ".bias"] = TensorSpec((shape[0],))
    return out


def linear_layout(
    arch, runtime_weight: str, rule, modules: Sequence[str], *, experts: bool = False
) -> dict[str, Any]:
    """The runtime weight's rule and, when its checkpoint ``modules`` are FP8, its scales.

    ``runtime_weight`` is ``....weight`` or the experts' ``...w13_weight``/``...w2_weight``;
    scales sit beside it (``...weight_scale``, ``...w13_weight_scale``).  ``modules`` are
    quantised together or not at all (ignoring is per fused layer).
    """
    flags = {arch.fp8(m) for m in modules}
    if len(flags) != 1:
        raise ValueError(f"invalid case: fused modules {list(modules)} are partly ignored")
    if not flags.pop():
        return {runtime_weight: rule}
    stem = runtime_weight.removesuffix("weight")
    out: dict[str, Any] = {runtime_weight: InDtype(rule, FP8)}
    q = arch.quant
    if q.method == "fp8_block":
        out[stem + "weight_scale_inv"] = InDtype(BlockScales(rule, q.block), SCALE)
        return out
    per_shard = not experts or runtime_weight.endswith("w13_weight")
    out[stem + "weight_scale"] = InDtype(ShardScales(rule, "weight_scale", not per_shard), SCALE)
    if q.activation_scheme == "static":
        out[stem + "input_scale"] = InDtype(ShardScales(rule, "input_scale", experts), SCALE)
    return out


def quantization_config(arch) -> dict[str, Any]:
    """``quantization_config`` as HF FP8 checkpoints write it (nothing when unquantised)."""
    q = arch.quant
    if q is None:
        return {}
    config: dict[str, Any] = {"quant_method": "fp8", "activation_scheme": q.activation_scheme}
    if q.block is not None:
        config["weight_block_size"] = list(q.block)
    config[q.ignore_key] = list(q.ignored)
    return {"quantization_config": config}
