"""Tiny, valid architectures per family, for a given tensor-parallel size and layer count.

The parallel sizes are drawn first (``weightcheck.strategies.cases``) and each family's strategy builds
only shapes they can split: heads and intermediate sizes divisible by tp, kv-head counts that
tp either divides or is a multiple of (GQA replication), at least ``min_layers`` layers for
the pipeline ranks.  No ``assume``: invalid shapes are never drawn.  A new family adds one
strategy here, named by its entry in ``weightcheck.families``; which LoRA targets and FP8
methods its archs draw come from that entry too.

Index boundaries are reached rarely (``one_in``), so examples stay tiny and fast, and every
rare branch shrinks to the small one: 11-12 layers (layer 1's name a prefix of layer 10's),
17-44 experts (two-digit expert ids on every expert-parallel rank, linear or round robin), vocab
sizes one below and one above a padding multiple, GPT-2 ``n_inner = 4 * n_embd``.  Config fields
HF fills in when absent are left out of config.json at random (``config_omissions``).
"""

from __future__ import annotations

import dataclasses
import functools
import math

from hypothesis import strategies as st

from weightcheck.capabilities import Capabilities
from weightcheck.arch import DTYPES, IGNORE_KEYS, MLA, Arch, LoRA, MoE, Quant
from weightcheck.families import family, resolve
from weightcheck.reference_models.families import family_spec

DTYPE_NAMES = tuple(DTYPES)
MAX_LAYERS = 4
MAX_EXPERTS = 16
# The rare big branches: layer 1's name is a prefix of layer 10's ("model.layers.1" of
# "model.layers.10.") and expert 1's of expert 10's; 44 experts = 10 * 4 + 4 put a two-digit id
# on every rank of a linear split over up to 4 expert-parallel ranks (round robin needs 14).
MANY_LAYERS = (11, 12)
MANY_EXPERTS = (MAX_EXPERTS + 1, 44)
RARELY = 40  # one draw in about this many takes a big branch
# ... and one in 12 for the layers under pipeline parallel, where layer names are matched
# against other ranks' (a many-layer MoE example keeps 1-4 experts: its cost is per tensor)
RARELY_UNDER_PP = 12
FEW_EXPERTS = 4


# Strategies that never change are built once: Hypothesis caches and validates them per object.
_DTYPES = st.sampled_from(DTYPE_NAMES)
HEAD_DIMS = st.sampled_from((2, 4, 8))


@functools.lru_cache(maxsize=None)
def one_in(n: int) -> st.SearchStrategy[bool]:
    """True in about one draw of ``n``; shrinks to False (a rare branch is never the minimum)."""
    return st.sampled_from(range(n)).map(lambda k: k == n - 1)


def dtypes() -> st.SearchStrategy[str]:
    return _DTYPES


def padding_unit(tp_size: int) -> int:
    """The vocab padding multiple: lcm(64, tp) (docs/runtime-layout.md, vocab-parallel)."""
    return math.lcm(64, tp_size)


@functools.lru_cache(maxsize=None)
def vocab_sizes(tp_size: int = 1) -> st.SearchStrategy[int]:
    """Mostly not multiples of 64, so vocab padding is exercised; sometimes exact multiples, and
    sometimes one below or one above a padding multiple (63/65, 127/129, 191/193; 191/193 for
    tp 3, whose unit is 192): the last real row next to the first padding row, or alone on the
    last rank."""
    unit = padding_unit(tp_size)
    near = sorted(k * unit + d for k in range(1, 4) for d in (-1, 1) if k * unit + d <= 200)
    return st.one_of(st.integers(1, 200), st.sampled_from((64, 128)), st.sampled_from(near))


@functools.lru_cache(maxsize=None)
def layer_counts(min_layers: int = 1) -> st.SearchStrategy[int]:
    """1-4 layers; rarely 11-12, less rarely when ``min_layers`` > 1 (the pipeline ranks): vLLM's
    default partition of 11-12 layers over 2-4 ranks always puts layers 1 and 10 on different
    ranks, as do most uneven ones, and some of those split at layer 10 (``partitions``)."""
    few = st.integers(max(1, min_layers), MAX_LAYERS)
    many = st.integers(*MANY_LAYERS)
    return one_in(RARELY_UNDER_PP if min_layers > 1 else RARELY).flatmap(
        lambda big: many if big else few
    )


_EXPERT_COUNTS = one_in(RARELY).flatmap(
    lambda big: st.integers(*MANY_EXPERTS) if big else st.integers(1, MAX_EXPERTS)
)


_FEW_EXPERT_COUNTS = st.integers(1, FEW_EXPERTS)


def expert_counts() -> st.SearchStrategy[int]:
    """1-16 experts; rarely 17-44, so every expert-parallel rank holds a two-digit expert id."""
    return _EXPERT_COUNTS


@functools.lru_cache(maxsize=None)
def _omission_lists(fields: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(fields), unique=True)


@st.composite
def config_omissions(draw, arch: Arch) -> Arch:
    """``arch`` with some of the config.json fields its family may leave out for it
    (``FamilySpec.omittable``: only values HF assumes when absent) left out; shrinks to none."""
    fields = family_spec(arch.family).omittable(arch)
    if not fields:
        return arch
    omits = draw(_omission_lists(fields), label="config omits")
    return dataclasses.replace(arch, config_omits=tuple(omits)) if omits else arch


@functools.lru_cache(maxsize=None)
def kv_head_counts(tp_size: int) -> st.SearchStrategy[int]:
    return st.sampled_from([n for n in (1, 2, 3, 4) if n % tp_size == 0 or tp_size % n == 0])


def flag(caps: Capabilities, feature: str) -> st.SearchStrategy[bool]:
    return st.booleans() if caps.supports(feature) else st.just(False)


@functools.lru_cache(maxsize=None)
def loras(family_name: str, targets: tuple[str, ...] | None = None) -> st.SearchStrategy[LoRA]:
    """LoRA wrappings of the layer kinds the family registry lists (or of ``targets``, some of
    them); shrinks to one target."""
    targets = family(family_name).lora_targets if targets is None else targets
    return st.builds(
        LoRA,
        targets=st.lists(st.sampled_from(targets), min_size=1, unique=True).map(tuple),
        rank=st.integers(1, 4),
    )


@functools.lru_cache(maxsize=None)
def maybe_lora(caps: Capabilities, family_name: str) -> st.SearchStrategy[LoRA | None]:
    if caps.supports("lora") and family(family_name).lora:
        return st.none() | loras(family_name)
    return st.none()


# Block sizes: mostly ones that divide neither the weight nor the TP split; sometimes ones
# larger than any tiny weight (a single partial block), as real 128x128 blocks are.
_BLOCK_SIZES = st.one_of(st.integers(1, 6), st.sampled_from((8, 128)))


@st.composite
def quants(draw, arch: Arch, methods: tuple[str, ...]) -> Quant:
    """An FP8 config for ``arch``: method, activations, block, modules left unquantised."""
    method = draw(st.sampled_from(methods), label="fp8 method")
    block = None
    scheme = "dynamic"
    if method == "fp8_block":
        block = (draw(_BLOCK_SIZES, label="block rows"), draw(_BLOCK_SIZES, label="block columns"))
    else:
        scheme = draw(st.sampled_from(("dynamic", "static")), label="activation scheme")
    groups = family_spec(arch.family).quant_groups(arch)
    ignored = draw(st.lists(st.sampled_from(groups), unique=True, max_size=3), label="ignored")
    return Quant(
        method=method,
        activation_scheme=scheme,
        block=block,
        ignored=tuple(m for group in ignored for m in group),
        ignore_key=draw(st.sampled_from(IGNORE_KEYS), label="ignore key"),
    )


def with_quant(arch: Arch, caps: Capabilities) -> st.SearchStrategy[Arch]:
    """``arch`` unquantised or with an FP8 config of a method its family comes in and the
    loader supports (about half each)."""
    supported = tuple(m for m in family(arch.family).fp8_methods if caps.supports(m))
    if not supported:
        return st.just(arch)
    quantized = quants(arch, supported).map(lambda q: dataclasses.replace(arch, quant=q))
    return st.one_of(st.just(arch), quantized)


@st.composite
def moes(draw, tp_size: int, num_layers: int, shared: bool) -> MoE:
    """1-16 experts (rarely up to 44; 1-4 with many layers); some layers may be dense, never
    all of them."""
    num_experts = draw(_FEW_EXPERT_COUNTS if num_layers > MAX_LAYERS else expert_counts())
    dense = draw(st.sets(st.integers(0, num_layers - 1), max_size=num_layers - 1))
    return MoE(
        num_experts=num_experts,
        top_k=draw(st.integers(1, min(num_experts, 4))),
        moe_intermediate_size=tp_size * draw(st.integers(1, 4)),
        shared_expert_intermediate_size=tp_size * draw(st.integers(1, 4)) if shared else 0,
        dense_layers=tuple(sorted(dense)),
    )


@st.composite
def attention_shapes(draw, tp_size: int) -> dict:
    """GQA head counts tp can split; hidden_size a multiple of num_heads (transformers checks)."""
    num_kv_heads = draw(kv_head_counts(tp_size))
    groups = [g for g in (1, 2, 3, 4) if (num_kv_heads * g) % tp_size == 0]
    num_heads = num_kv_heads * draw(st.sampled_from(groups))
    return {
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "hidden_size": num_heads * draw(st.integers(1, 4)),
        "head_dim": draw(HEAD_DIMS),
    }


@st.composite
def decoder_archs(
    draw,
    family: str,
    tp_size: int = 1,
    min_layers: int = 1,
    caps: Capabilities | None = None,
    *,
    moe: bool = False,
    shared_expert: bool = False,
    qkv_bias_always: bool = False,
) -> Arch:
    """The llama-like decoders: GQA attention, SwiGLU or MoE MLPs, optional LoRA.

    ``qkv_bias_always`` is Qwen2's rule (q/k/v always biased, head_dim = hidden / heads).
    """
    caps = caps or Capabilities()
    shapes = draw(attention_shapes(tp_size))
    if qkv_bias_always:
        shapes["hidden_size"] = shapes["num_heads"] * shapes["head_dim"]
    num_layers = draw(layer_counts(min_layers))
    arch = Arch(
        family=family,
        **shapes,
        num_layers=num_layers,
        intermediate_size=tp_size * draw(st.integers(1, 6)),
        vocab_size=draw(vocab_sizes(tp_size)),
        tie_word_embeddings=draw(flag(caps, "tied_embeddings")),
        attention_bias=True if qkv_bias_always else draw(flag(caps, "attention_bias")),
        dtype=draw(dtypes()),
        moe=draw(moes(tp_size, num_layers, shared=shared_expert)) if moe else None,
        lora=draw(maybe_lora(caps, family)),
    )
    return draw(with_quant(draw(config_omissions(arch)), caps))


def llama_archs(tp_size: int = 1, min_layers: int = 1, caps: Capabilities | None = None):
    return decoder_archs("llama", tp_size, min_layers, caps)


def qwen3_moe_archs(tp_size: int = 1, min_layers: int = 1, caps: Capabilities | None = None):
    return decoder_archs("qwen3_moe", tp_size, min_layers, caps, moe=True)


def qwen2_moe_archs(tp_size: int = 1, min_layers: int = 1, caps: Capabilities | None = None):
    return decoder_archs(
        "qwen2_moe", tp_size, min_layers, caps, moe=True, shared_expert=True, qkv_bias_always=True
    )


@st.composite
def gpt2_archs(draw, tp_size: int = 1, min_layers: int = 1, caps: Capabilities | None = None) -> Arch:
    """GPT-2 always has biases and nKV == nH; no LoRA.  The MLP is sometimes GPT-2's own
    4 * n_embd, which its config.json may then write as ``"n_inner": null``."""
    caps = caps or Capabilities()
    num_heads = tp_size * draw(st.integers(1, 3))
    head_dim = draw(HEAD_DIMS)
    hidden_size = num_heads * head_dim
    if draw(one_in(4), label="n_inner = 4 * n_embd"):
        intermediate_size = 4 * hidden_size
    else:
        intermediate_size = tp_size * draw(st.integers(1, 6))
    arch = Arch(
        family="gpt2",
        hidden_size=hidden_size,
        num_layers=draw(layer_counts(min_layers)),
        num_heads=num_heads,
        num_kv_heads=num_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        vocab_size=draw(vocab_sizes(tp_size)),
        max_position_embeddings=draw(st.integers(2, 12)),
        tie_word_embeddings=draw(flag(caps, "tied_embeddings")),
        attention_bias=True,
        dtype=draw(dtypes()),
    )
    return draw(config_omissions(arch))


@st.composite
def deepseek_v32_archs(
    draw, tp_size: int = 1, min_layers: int = 1, caps: Capabilities | None = None
) -> Arch:
    """MLA + indexer, bf16 or block FP8 (GLM-5-FP8); nKV = nH; no LoRA, no attention bias."""
    caps = caps or Capabilities()
    num_heads = tp_size * draw(st.integers(1, 2))
    dim = st.integers(1, 6)
    mla = MLA(
        q_lora_rank=draw(dim),
        kv_lora_rank=draw(dim),
        qk_nope_head_dim=draw(st.integers(1, 4)),
        qk_rope_head_dim=2 * draw(st.integers(1, 2)),
        v_head_dim=draw(st.integers(1, 4)),
        index_n_heads=draw(st.integers(1, 4)),
        index_head_dim=draw(dim),
    )
    arch = Arch(
        family="deepseek_v32",
        hidden_size=draw(st.integers(2, 12)),
        num_layers=draw(layer_counts(min_layers)),
        num_heads=num_heads,
        num_kv_heads=num_heads,
        head_dim=mla.qk_rope_head_dim,
        intermediate_size=tp_size * draw(st.integers(1, 6)),
        vocab_size=draw(vocab_sizes(tp_size)),
        tie_word_embeddings=draw(flag(caps, "tied_embeddings")),
        dtype=draw(dtypes()),
        mla=mla,
    )
    return draw(with_quant(draw(config_omissions(arch)), caps))


@functools.lru_cache(maxsize=None)
def archs(
    family_name: str, tp_size: int = 1, min_layers: int = 1, caps: Capabilities | None = None
) -> st.SearchStrategy[Arch]:
    """The arch strategy the family registry names for ``family_name``, built once per
    (tp_size, min_layers, caps): strategy objects are validated on first use, and building them
    anew for every example was a third of the drawing time."""
    factory = resolve(family(family_name).archs)
    return factory(tp_size=tp_size, min_layers=min_layers, caps=caps)
