"""GPT-2 and the seed bugs of vLLM PR #38074 (JAIS: Conv1D transpose, tied lm_head, mask buffers)."""

from __future__ import annotations

from weightcheck.reference_models.reference_loader.gpt2 import (
    CONV1D_MODULES,
    GPT2LMHeadModel,
)

from .base import Mutant, MutantLoader


class GPT2NoTranspose(GPT2LMHeadModel):
    def needs_transpose(self, name):
        return False


class GPT2MaskedBiasNotSkipped(GPT2LMHeadModel):
    def is_skipped(self, name):
        # Skips ``attn.bias`` but forgets ``attn.masked_bias``.
        parts = name.split(".")
        if parts[-2:] == ["attn", "bias"]:
            return True
        return self.arch.tie_word_embeddings and name.startswith("lm_head.")


class GPT2TiedLmHeadNotSkipped(GPT2LMHeadModel):
    """JAIS's loader as first written: a parameter dict without aliases and no lm_head skip."""

    def load_weights(self, weights):
        params_dict = dict(self.named_parameters())
        loaded = set()
        for name, w in weights:
            name = self.normalize_name(name)
            if ".attn.bias" in name or ".attn.masked_bias" in name:
                continue
            if self.is_on_other_rank(name):
                continue
            param = params_dict[name]  # KeyError: 'lm_head.weight' when tied
            if any(c in name for c in CONV1D_MODULES) and name.endswith(".weight"):
                w = w.t()
            param.weight_loader(param, w)
            loaded.add(name)
        return loaded


MUTANTS = [
    Mutant(
        "conv1d_not_transposed",
        "GPT-2 Conv1D weights ([in, out]) loaded without the transpose",
        "vLLM PR #38074 (JAIS AutoWeightsLoader)",
        "roundtrip",
        ("gpt2",),
        MutantLoader("conv1d_not_transposed", {"gpt2": GPT2NoTranspose}),
        "c_",
    ),
    Mutant(
        "tied_lm_head_not_skipped",
        "with tied embeddings, the checkpoint's redundant lm_head.weight is looked up (KeyError)",
        "vLLM PR #38074 (JAIS: skip_prefixes=['lm_head.'] when tied)",
        "roundtrip",
        ("gpt2",),
        MutantLoader("tied_lm_head_not_skipped", {"gpt2": GPT2TiedLmHeadNotSkipped}),
        "KeyError: 'lm_head.weight'",
    ),
    Mutant(
        "masked_bias_not_skipped",
        "the .attn.masked_bias mask buffer is not skipped",
        "vLLM PR #38074 (JAIS)",
        "roundtrip",
        ("gpt2",),
        MutantLoader("masked_bias_not_skipped", {"gpt2": GPT2MaskedBiasNotSkipped}),
        "masked_bias",
    ),
]
