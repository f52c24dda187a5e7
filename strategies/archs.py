"""Tiny, valid architectures per family, for a given tensor-parallel size.

The tp size is drawn first (``strategies.cases``) and each family's strategy builds only
shapes that size can split: heads and intermediate sizes divisible by tp, and kv-head counts
that tp either divides or is a multiple of (GQA replication).  No ``assume``: invalid shapes are
never drawn.  A new family adds one strategy here and registers it in ``ARCH_STRATEGIES``.
"""

from __future__ import annotations

from hypothesis import strategies as st

from reference_models.arch import DTYPES, Arch

DTYPE_NAMES = tuple(DTYPES)


def dtypes() -> st.SearchStrategy[str]:
    return st.sampled_from(DTYPE_NAMES)


def vocab_sizes() -> st.SearchStrategy[int]:
    """Mostly not multiples of 64, so vocab padding is exercised; sometimes exact multiples."""
    return st.one_of(st.integers(1, 200), st.sampled_from([64, 128]))


def kv_head_counts(tp_size: int) -> st.SearchStrategy[int]:
    return st.sampled_from([n for n in (1, 2, 3, 4) if n % tp_size == 0 or tp_size % n == 0])


@st.composite
def llama_archs(draw, tp_size: int = 1, tied: bool = True, bias: bool = True) -> Arch:
    num_kv_heads = draw(kv_head_counts(tp_size))
    groups = [g for g in (1, 2, 3, 4) if (num_kv_heads * g) % tp_size == 0]
    num_heads = num_kv_heads * draw(st.sampled_from(groups))
    return Arch(
        family="llama",
        # transformers requires hidden_size % num_heads == 0; head_dim stays independent of it.
        hidden_size=num_heads * draw(st.integers(1, 4)),
        num_layers=draw(st.integers(1, 3)),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=draw(st.sampled_from([2, 4, 8])),
        intermediate_size=tp_size * draw(st.integers(1, 6)),
        vocab_size=draw(vocab_sizes()),
        tie_word_embeddings=draw(st.booleans()) if tied else False,
        attention_bias=draw(st.booleans()) if bias else False,
        dtype=draw(dtypes()),
    )


@st.composite
def gpt2_archs(draw, tp_size: int = 1, tied: bool = True, bias: bool = True) -> Arch:
    """GPT-2 always has biases and nKV == nH; ``bias`` does not apply."""
    num_heads = tp_size * draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([2, 4, 8]))
    return Arch(
        family="gpt2",
        hidden_size=num_heads * head_dim,
        num_layers=draw(st.integers(1, 3)),
        num_heads=num_heads,
        num_kv_heads=num_heads,
        head_dim=head_dim,
        intermediate_size=tp_size * draw(st.integers(1, 6)),
        vocab_size=draw(vocab_sizes()),
        max_position_embeddings=draw(st.integers(2, 12)),
        tie_word_embeddings=draw(st.booleans()) if tied else False,
        attention_bias=True,
        dtype=draw(dtypes()),
    )


ARCH_STRATEGIES = {"llama": llama_archs, "gpt2": gpt2_archs}
