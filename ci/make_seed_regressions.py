"""Write the bundled regression corpus: one case per seed bug, in fixtures/regressions/.

Each case is built by hand to hold exactly the conditions its bug needs, so it fails on the
matching mutant in reference_models/mutants/ on every run (tests/test_regressions.py checks that).

    python ci/make_seed_regressions.py
"""

from __future__ import annotations

import random
from pathlib import Path

from weightcheck.conformance.casefiles import SCHEMA
from weightcheck.conformance.runner import Example
from weightcheck.fixtures.case import Case, CheckpointRecipe
from weightcheck.arch import MLA, Arch, LoRA, MoE, Placement, Quant
from weightcheck.reference_models.families import family_spec

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "regressions"


def recipe(arch: Arch, files: int, seed: int, fmt: str = "default", optional: bool = True) -> CheckpointRecipe:
    """All tensors (optional buffers and aliases too, when asked) shuffled over ``files`` files."""
    specs = family_spec(arch.family).checkpoint(arch, fmt)
    names = [n for n, s in specs.items() if s.role == "weight" or optional]
    rng = random.Random(seed)
    rng.shuffle(names)
    return CheckpointRecipe(seed, tuple(tuple(names[k::files]) for k in range(files)), fmt)


def cases() -> dict[str, tuple[Example, str]]:
    gpt2 = Arch("gpt2", 8, 2, 2, 2, 4, 12, 70, max_position_embeddings=6, tie_word_embeddings=True, attention_bias=True)
    llama = Arch("llama", 8, 2, 4, 2, 2, 8, 90, attention_bias=True, dtype="bfloat16")
    moe = Arch(
        "qwen3_moe", 8, 2, 4, 2, 2, 8, 100,
        moe=MoE(num_experts=5, top_k=2, moe_intermediate_size=4, dense_layers=(0,)),
        lora=LoRA(("experts", "qkv"), rank=2),
    )
    moe_plain = Arch("qwen3_moe", 8, 3, 4, 2, 2, 8, 100, tie_word_embeddings=True, moe=MoE(4, 2, 4))
    # FP8 block 3x5 divides neither the weights nor the tp=2 split of q (rows 0:8 | 8:16).
    llama_fp8 = Arch(
        "llama", 8, 2, 4, 2, 4, 8, 90, attention_bias=True, dtype="bfloat16",
        quant=Quant("fp8_block", block=(3, 5)),
    )
    glm = Arch(
        "deepseek_v32", 8, 2, 2, 2, 2, 6, 100, dtype="bfloat16",
        mla=MLA(q_lora_rank=6, kv_lora_rank=4, qk_nope_head_dim=2, qk_rope_head_dim=2,
                v_head_dim=3, index_n_heads=2, index_head_dim=4),
        quant=Quant("fp8_block", block=(3, 5), ignore_key="modules_to_not_convert"),
    )
    return {
        "seed-38074-jais-conv1d-tied-masks": (
            Example("roundtrip", Case(gpt2, Placement((2,), tp_size=2, tp_rank=1), recipe(gpt2, 2, 38074))),
            "vLLM PR #38074 (JAIS): Conv1D transpose, tied lm_head skip, attn.masked_bias skip",
        ),
        "seed-41086-missing-bias-untracked": (
            Example(
                "missing_tensor",
                Case(llama, Placement((2,), tp_size=2, tp_rank=0), recipe(llama, 3, 41086)),
                {"dropped": "model.layers.1.self_attn.o_proj.bias"},
            ),
            "vLLM PR #41086: a missing bias must not go unnoticed (the FP8 part of the seed "
            "needs the quantized families)",
        ),
        "seed-37114-lora-experts-base-layer": (
            Example(
                "lora_equivalence",
                Case(moe, Placement((2,), ep_size=2, ep_rank=1), recipe(moe, 2, 37114, "per_expert")),
            ),
            "vLLM PR #37114: LoRA-wrapped experts are mlp.experts.base_layer.w13_weight",
        ),
        "seed-42716-moe-keyword-ids": (
            Example(
                "roundtrip",
                Case(moe, Placement((2,), tp_size=2, tp_rank=1), recipe(moe, 1, 42716, "fused_experts")),
            ),
            "vLLM PR #42716: shard_id/expert_id must reach the MoE weight loader as keywords",
        ),
        "seed-42944-pp-skips-other-ranks-layers": (
            Example(
                "all_ranks",
                Case(moe_plain, Placement((2, 1), pp_size=2, pp_rank=1), recipe(moe_plain, 2, 42944, "per_expert")),
            ),
            "vLLM PR #42944 (the PP half): every rank must skip the layers it does not hold "
            "before indexing its parameters; the FP8 indexer half needs the quantized families",
        ),
        "seed-41086-fp8-quantized-module-exempted": (
            Example(
                "check_loaded",
                Case(llama_fp8, Placement((2,), tp_size=2, tp_rank=1), recipe(llama_fp8, 2, 41086)),
                {"dropped": "model.layers.0.self_attn.o_proj.bias"},
            ),
            "vLLM PR #41086 (the FP8 half): the completeness check exempted every parameter of a "
            "quantized module, so a missing bias of an FP8 o_proj went unnoticed",
        ),
        "seed-42944-fp8-indexer-pp": (
            Example(
                "all_ranks",
                Case(glm, Placement((1, 1), pp_size=2, pp_rank=1), indexer_recipe(glm, 42944)),
            ),
            "vLLM PR #42944 (GLM-5.1-FP8 under PP): the FP8 indexer wk is dequantised and fused "
            "into wk_weights_proj; ranks without layer 0 must skip it before the parameter lookup "
            "(the scale is stored before its weight, in another file)",
        ),
    }


def indexer_recipe(arch: Arch, seed: int) -> CheckpointRecipe:
    """Two files; layer 0's indexer wk scale in the first, its weight in the second."""
    base = recipe(arch, 2, seed)
    wk = "model.layers.0.self_attn.indexer.wk."
    first = [n for n in base.files[0] if n != wk + "weight"]
    second = [n for n in base.files[1] if n != wk + "weight_scale_inv"]
    return CheckpointRecipe(seed, (tuple([wk + "weight_scale_inv"] + first), tuple(second + [wk + "weight"])), base.format)


def main() -> None:
    import json

    OUT.mkdir(parents=True, exist_ok=True)
    for name, (example, origin) in cases().items():
        body = {"schema": SCHEMA, **example.to_dict(), "origin": origin}
        (OUT / f"{name}.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        print(f"wrote {OUT / name}.json")


if __name__ == "__main__":
    main()
