"""Tensors the model has no place for, dropped without a word (the way engines skip names)."""

from __future__ import annotations

import types

from weightcheck.reference_models.reference_loader.gpt2 import GPT2LMHeadModel
from weightcheck.reference_models.reference_loader.llama import LlamaForCausalLM
from weightcheck.reference_models.reference_loader.moe import FusedMoE
from weightcheck.reference_models.reference_loader.qwen3_moe import Qwen3MoeForCausalLM

from .base import Mutant, MutantLoader


class LlamaSkipsUnknownNames(LlamaForCausalLM):
    """vLLM models' ``if name not in params_dict: continue`` (written to step over rotary
    buffers and tied lm_head copies): every name without a parameter is dropped silently."""

    def load_dense(self, tracker, name, loaded_weight):
        target = self.lora_base_name(self.stacked_target(name)[0])
        if target not in dict(self.named_parameters(remove_duplicate=False)):
            return
        super().load_dense(tracker, name, loaded_weight)


class LlamaRotarySkippedBySubstring(LlamaForCausalLM):
    """vLLM's llama.py: ``if "rotary_emb.inv_freq" in name: continue``: a substring test, so any
    name containing it (``...rotary_emb.inv_freq_scaled``) is skipped as if it were the buffer."""

    def is_skipped(self, name):
        if "rotary_emb.inv_freq" in name:
            return True
        return super().is_skipped(name)


class GPT2MaskSkippedBySubstring(GPT2LMHeadModel):
    """JAIS / GPT-2 loaders: ``if ".attn.bias" in name or ".attn.masked_bias" in name:
    continue``; a name that only starts like a mask buffer is skipped with it."""

    def is_skipped(self, name):
        if ".attn.bias" in name or ".attn.masked_bias" in name:
            return True
        return super().is_skipped(name)


def _expert_ids_unchecked(model):
    """vLLM's expert map: a global id without a local slot (``expert_map[id] == -1``) means
    "another ep rank holds it", so an id past the last expert is skipped as someone else's."""

    def lookup(self, weight_name, shard_id, expert_id, allowed):
        return self.expert_map.get(expert_id)

    for module in model.modules():
        if isinstance(module, FusedMoE):
            module._check_expert = types.MethodType(lookup, module)


class Qwen3RedundantExpertMapping(Qwen3MoeForCausalLM):
    """vLLM #41920's shape: the expert mapping is built for the physical expert count (logical
    experts plus EPLB's redundant slots) and the id is not checked against the model's experts,
    so ``experts.{E}`` is mapped and left to the weight loader, whose expert map says "not
    local" (-1) for it: skipped as another rank's."""

    REDUNDANT = 2

    def check_expert_id(self, name, expert_id):
        return None

    def expert_params_mapping(self):
        mapping = super().expert_params_mapping()
        logical = self.arch.moe.num_experts
        extra = [
            (param, name.replace(f"experts.{e}.", f"experts.{e + logical}.", 1), shard, e + logical)
            for param, name, shard, e in mapping
            if e < self.REDUNDANT
        ]
        return mapping + extra


MUTANTS = [
    Mutant(
        "unknown_names_skipped",
        "every checkpoint name without a parameter is skipped silently",
        "vLLM models' `if name not in params_dict: continue`",
        "unexpected_tensor",
        ("llama",),
        MutantLoader("unknown_names_skipped", {"llama": LlamaSkipsUnknownNames}),
        "silently ignored",
    ),
    Mutant(
        "rotary_buffer_skipped_by_substring",
        "names containing rotary_emb.inv_freq are skipped as the buffer",
        "vLLM models/llama.py: `if \"rotary_emb.inv_freq\" in name: continue`",
        "unexpected_tensor",
        ("llama",),
        MutantLoader("rotary_buffer_skipped_by_substring", {"llama": LlamaRotarySkippedBySubstring}),
        "only looks like a skippable buffer",
    ),
    Mutant(
        "mask_buffer_skipped_by_substring",
        "names starting like .attn.bias / .attn.masked_bias are skipped as mask buffers",
        "vLLM PR #38074 (JAIS): `if \".attn.bias\" in name or \".attn.masked_bias\" in name`",
        "unexpected_tensor",
        ("gpt2",),
        MutantLoader("mask_buffer_skipped_by_substring", {"gpt2": GPT2MaskSkippedBySubstring}),
        "only looks like a skippable buffer",
    ),
    Mutant(
        "expert_ids_unchecked",
        "an expert id past the last expert is taken for another ep rank's and skipped",
        "vLLM FusedMoE expert_map (-1: not local) used without a range check",
        "unexpected_tensor",
        ("qwen3_moe",),
        MutantLoader("expert_ids_unchecked", {"qwen3_moe": Qwen3RedundantExpertMapping}, patch=_expert_ids_unchecked),
        "an expert the model does not have",
    ),
]
