"""The canonical runtime layout of a small example, printed from the oracle itself.

For adapter authors: ``python -m weightcheck layout --family llama --tp 2 --rank 1`` lists every
runtime parameter a loader must present on that rank, its shape and dtype, and which checkpoint
tensor and slice each region of it comes from (the oracle's own pieces, in the words failure
messages use).  ``python -m weightcheck layout --doc`` prints docs/runtime-layout.md, which
ships with the package.
"""

from __future__ import annotations

import math
from dataclasses import replace
from importlib import resources

from weightcheck.arch import MLA, Arch, LoRA, MoE, Placement, Quant
from weightcheck.families import family as family_entry
from weightcheck.reference_models.families import checkpoint_specs
from weightcheck.reference_models.oracle.expected import checkpoint_shapes, expected_layout

from .assertions import describe_region, describe_source

FP8_CHOICES = {"per-tensor": "fp8_per_tensor", "block": "fp8_block"}


def example_arch(
    family: str,
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
    *,
    fp8: str | None = None,
    lora: bool = False,
    tied: bool = False,
) -> Arch:
    """A small, valid arch of ``family`` that ``tp`` x ``pp`` x ``ep`` can split."""
    kv = 2 if 2 % tp == 0 or tp % 2 == 0 else tp
    heads = math.lcm(kv, tp) * 2
    head_dim = 2
    layers = max(2, pp)
    entry = family_entry(family)
    common = dict(
        family=family,
        num_layers=layers,
        intermediate_size=4 * tp,
        vocab_size=100,
        tie_word_embeddings=tied,
        dtype="bfloat16",
    )
    if family == "gpt2":
        arch = Arch(hidden_size=heads * head_dim, num_heads=heads, num_kv_heads=heads, head_dim=head_dim,
                    attention_bias=True, max_position_embeddings=8, **common)
    elif family == "deepseek_v32":
        mla = MLA(q_lora_rank=4, kv_lora_rank=4, qk_nope_head_dim=2, qk_rope_head_dim=2,
                  v_head_dim=2, index_n_heads=2, index_head_dim=4)
        arch = Arch(hidden_size=8, num_heads=heads, num_kv_heads=heads, head_dim=2, mla=mla, **common)
    else:
        moe = None
        if "experts" in entry.lora_targets or entry.formats != ("default",):
            shared = 2 * tp if family == "qwen2_moe" else 0
            moe = MoE(num_experts=max(4, ep), top_k=2, moe_intermediate_size=2 * tp,
                      shared_expert_intermediate_size=shared)
        hidden = heads * head_dim
        arch = Arch(hidden_size=hidden, num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
                    attention_bias=family == "qwen2_moe", moe=moe, **common)
    if lora:
        if not entry.lora:
            raise ValueError(f"{family} has no LoRA wrapping")
        arch = replace(arch, lora=LoRA(entry.lora_targets))
    if fp8:
        method = FP8_CHOICES[fp8]
        if method not in entry.fp8_methods:
            raise ValueError(f"{family} has no {fp8} FP8 checkpoints (it has {list(entry.fp8_methods)})")
        quant = Quant(method, block=(2, 3) if method == "fp8_block" else None)
        arch = replace(arch, quant=quant)
    return arch


def placement_for(arch: Arch, tp: int, rank: int, pp: int, pp_rank: int, ep: int, ep_rank: int,
                  expert_placement: str = "linear") -> Placement:
    base, extra = divmod(arch.num_layers, pp)
    partition = tuple(base + (1 if i < extra else 0) for i in range(pp))
    return Placement(partition, tp, rank, pp, pp_rank, ep, ep_rank, expert_placement)


def render(arch: Arch, placement: Placement, fmt: str | None = None) -> str:
    """Every runtime parameter of the rank: name, shape, dtype, and each region's source."""
    fmt = fmt or family_entry(arch.family).formats[0]
    if fmt not in family_entry(arch.family).formats:
        raise ValueError(f"{arch.family} has no checkpoint format {fmt!r}")
    shapes = checkpoint_shapes(arch, fmt)
    lines = [
        f"{arch.family}: H={arch.hidden_size} layers={arch.num_layers} heads={arch.num_heads}/"
        f"{arch.num_kv_heads} head_dim={arch.head_dim} I={arch.intermediate_size} V={arch.vocab_size} "
        f"{arch.dtype}" + (" tied" if arch.tie_word_embeddings else "")
        + (f" experts={arch.moe.num_experts} Im={arch.moe.moe_intermediate_size}" if arch.moe else "")
        + (f" fp8={arch.quant.method}" + (f" block={arch.quant.block}" if arch.quant.block else "") if arch.quant else "")
        + (f" lora={','.join(arch.lora.targets)}" if arch.lora else ""),
        f"rank: tp {placement.tp_rank}/{placement.tp_size}, pp {placement.pp_rank}/{placement.pp_size} "
        f"(layers {list(placement.layers)}), ep {placement.ep_rank}/{placement.ep_size} "
        f"({placement.expert_placement}); checkpoint format: {fmt}",
        "",
    ]
    specs = checkpoint_specs(arch, fmt)
    for name, rule in expected_layout(arch, placement, fmt).items():
        shape, pieces = rule.pieces(arch, placement, shapes)
        dtype = getattr(rule, "dtype", None) or arch.dtype
        lines.append(f"{name}  {list(shape)} {dtype}")
        for piece in pieces:
            region = describe_region(piece.dst, tuple(shape))
            lines.append(f"    {region:<28} <- {describe_source(piece, shapes)}  ({piece.label})")
    skipped = sorted(n for n, s in specs.items() if s.role != "weight")
    if skipped:
        lines += ["", "checkpoint tensors a loader must skip (no runtime parameter): " + ", ".join(skipped)]
    return "\n".join(lines)


def document() -> str:
    """docs/runtime-layout.md, as shipped in the package."""
    return resources.files("weightcheck").joinpath("runtime-layout.md").read_text()
