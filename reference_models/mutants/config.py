"""config.json reading, and index boundaries (names and ids of two digits).

Engines build their model from config.json, not from the suite's ``Arch``: ``ConfigLoader``
is the reference loader doing that, through ``ConfigReader`` (the Arch a correct reader makes of
``weightcheck.hf_config(arch)``, filling in absent fields as HF does; tests/test_configs.py
checks it gives back the arch).  Each config mutant overrides one field's reading the way
engines get it wrong: a hard-coded default, a field ignored, ``dict.get`` with a default that a
``null`` defeats.  The suite's configs leave optional fields out (``Arch.config_omits``) and
draw values that differ from the derived ones, so both kinds of bug show.

The boundary mutants go wrong only past layer 9 or expert 9: a pipeline-parallel skip that
matches layer 1's prefix against layer 10, an expert id parsed from one digit.
"""

from __future__ import annotations

import re
from dataclasses import replace

from weightcheck import hf_config
from weightcheck.arch import MLA, Arch, MoE
from weightcheck.reference_models.reference_loader.llama import LlamaForCausalLM
from weightcheck.reference_models.reference_loader.qwen3_moe import Qwen3MoeForCausalLM

from .base import Mutant, MutantLoader


class ConfigReader:
    """config.json -> the Arch an engine builds; one method per field engines misread.

    Fields config.json does not describe (LoRA wrapping, the FP8 details) come from ``arch``."""

    def __call__(self, config: dict, arch: Arch) -> Arch:
        return getattr(self, config["model_type"])(config, arch)

    # -- fields, read as HF reads them (override one to build a mutant) --------------------------

    def head_dim(self, config: dict) -> int:
        """LlamaConfig: absent -> hidden_size // num_attention_heads (Qwen3-MoE's model too)."""
        head_dim = config.get("head_dim")
        return config["hidden_size"] // config["num_attention_heads"] if head_dim is None else head_dim

    def tie_word_embeddings(self, config: dict, default: bool) -> bool:
        """``default``: the model type's own (GPT2Config True, the others False)."""
        return config.get("tie_word_embeddings", default)

    def n_inner(self, config: dict) -> int:
        """GPT2Config.n_inner: null or absent -> 4 * n_embd."""
        inner = config.get("n_inner")
        return 4 * config["n_embd"] if inner is None else inner

    # -- families -----------------------------------------------------------------------------------

    def common(self, config: dict) -> dict:
        return {
            "hidden_size": config["hidden_size"],
            "num_layers": config["num_hidden_layers"],
            "num_heads": config["num_attention_heads"],
            "intermediate_size": config["intermediate_size"],
            "vocab_size": config["vocab_size"],
            "max_position_embeddings": config["max_position_embeddings"],
            "dtype": config["torch_dtype"],
        }

    def llama(self, config: dict, arch: Arch) -> Arch:
        return replace(
            arch,
            **self.common(config),
            num_kv_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
            head_dim=self.head_dim(config),
            tie_word_embeddings=self.tie_word_embeddings(config, False),
            attention_bias=config.get("attention_bias", False),
        )

    def moe(self, config: dict, shared: int = 0) -> MoE:
        step = config.get("decoder_sparse_step", 1)
        only = config.get("mlp_only_layers") or []
        return MoE(
            num_experts=config["num_experts"],
            top_k=config["num_experts_per_tok"],
            moe_intermediate_size=config["moe_intermediate_size"],
            shared_expert_intermediate_size=shared,
            dense_layers=tuple(
                i for i in range(config["num_hidden_layers"]) if i in only or (i + 1) % step
            ),
        )

    def qwen3_moe(self, config: dict, arch: Arch) -> Arch:
        return replace(self.llama(config, arch), moe=self.moe(config))

    def qwen2_moe(self, config: dict, arch: Arch) -> Arch:
        return replace(
            arch,
            **self.common(config),
            num_kv_heads=config["num_key_value_heads"],
            head_dim=config["hidden_size"] // config["num_attention_heads"],
            tie_word_embeddings=self.tie_word_embeddings(config, False),
            attention_bias=config.get("qkv_bias", True),
            moe=self.moe(config, config["shared_expert_intermediate_size"]),
        )

    def gpt2(self, config: dict, arch: Arch) -> Arch:
        H, heads = config["n_embd"], config["n_head"]
        return replace(
            arch,
            hidden_size=H,
            num_layers=config["n_layer"],
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=H // heads,
            intermediate_size=self.n_inner(config),
            vocab_size=config["vocab_size"],
            max_position_embeddings=config["n_positions"],
            tie_word_embeddings=self.tie_word_embeddings(config, True),
            attention_bias=True,
            dtype=config["torch_dtype"],
        )

    def deepseek_v32(self, config: dict, arch: Arch) -> Arch:
        fields = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                  "v_head_dim", "index_n_heads", "index_head_dim")
        return replace(
            arch,
            **self.common(config),
            num_kv_heads=config["num_key_value_heads"],
            head_dim=config["qk_rope_head_dim"],  # DeepseekV32Config's rule, whatever is written
            tie_word_embeddings=self.tie_word_embeddings(config, False),
            attention_bias=config.get("attention_bias", False),
            mla=MLA(**{k: config[k] for k in fields}),
        )


class ConfigLoader(MutantLoader):
    """The reference loader building its model from ``weightcheck.hf_config(arch)``."""

    def __init__(self, name: str, reader: ConfigReader, models=None):
        super().__init__(name, models)
        self.reader = reader

    def build(self, arch, placement):
        return super().build(self.reader(hf_config(arch), arch), placement)


# -- config.json mutants ------------------------------------------------------------------------


class TieDefaultTrue(ConfigReader):
    """``config.get("tie_word_embeddings", True)``: PretrainedConfig's default, not LlamaConfig's,
    so an untied Llama whose config leaves the field out is built tied (no lm_head)."""

    def tie_word_embeddings(self, config, default):
        return config.get("tie_word_embeddings", True)


class TieDefaultFalse(ConfigReader):
    """One ``config.get("tie_word_embeddings", False)`` for every model type: GPT-2's config.json
    leaves the field out because GPT2Config ties by default, so GPT-2 is built untied."""

    def tie_word_embeddings(self, config, default):
        return config.get("tie_word_embeddings", False)


class NInnerNullNotMapped(ConfigReader):
    """``config.get("n_inner", 4 * n_embd)``: the default only covers an absent key; GPT-2's
    ``"n_inner": null`` reaches the MLP as None."""

    def n_inner(self, config):
        return config.get("n_inner", 4 * config["n_embd"])


class NInnerIgnored(ConfigReader):
    """GPT-2's MLP hard-coded to ``4 * n_embd``, ignoring an explicit ``n_inner``."""

    def n_inner(self, config):
        return 4 * config["n_embd"]


class HeadDimFromHidden(ConfigReader):
    """``head_dim = hidden_size // num_attention_heads``, ignoring the config's ``head_dim``
    (seen with Mistral-NeMo, head_dim 128 where 5120 / 32 = 160)."""

    def head_dim(self, config):
        return config["hidden_size"] // config["num_attention_heads"]


class HeadDimRequired(ConfigReader):
    """``config["head_dim"]``: a config that derives it (Llama without the field) fails."""

    def head_dim(self, config):
        return config["head_dim"]


# -- index boundaries ---------------------------------------------------------------------------


class LlamaPPPrefixWithoutDot(LlamaForCausalLM):
    """The pipeline-parallel skip as ``name.startswith(f"model.layers.{i}")`` for every layer
    ``i`` another rank holds, without the trailing dot vLLM's missing-layer prefixes carry: a
    rank that holds layer 10 but not layer 1 skips layer 10 (and 11-19)."""

    def is_on_other_rank(self, name):
        if name.startswith("model.layers."):
            other = [i for i in range(self.arch.num_layers) if i not in self.placement.layers]
            return any(name.startswith(f"model.layers.{i}") for i in other)
        return super().is_on_other_rank(name)


class ExpertIdOneDigit(Qwen3MoeForCausalLM):
    """The expert id parsed from the checkpoint name with ``experts\\.(\\d)``: expert 12's
    tensors go to expert 1 (or are skipped when another ep rank holds expert 1)."""

    def expert_params_mapping(self):
        return [
            (param, weight_name, shard_id, int(re.search(r"experts\.(\d)", weight_name).group(1)))
            for param, weight_name, shard_id, _ in super().expert_params_mapping()
        ]


def _config_mutant(name, bug, origin, families, reader, message) -> Mutant:
    return Mutant(name, bug, origin, "roundtrip", families, ConfigLoader(name, reader), message)


MUTANTS = [
    _config_mutant(
        "tie_word_embeddings_default_true",
        "tie_word_embeddings read with PretrainedConfig's default True: an untied Llama whose "
        "config omits it is built tied",
        "PretrainedConfig's default (True) vs LlamaConfig's (False) in engines reading raw config.json",
        ("llama",), TieDefaultTrue(), "lm_head.weight",
    ),
    _config_mutant(
        "tie_word_embeddings_default_false",
        "tie_word_embeddings read with default False for every model type: GPT-2, whose config "
        "omits it (GPT2Config ties by default), is built untied",
        "GPT2Config's default (True) in engines reading raw config.json",
        ("gpt2",), TieDefaultFalse(), "lm_head.weight",
    ),
    _config_mutant(
        "n_inner_null_not_mapped",
        "GPT-2 n_inner read as config.get('n_inner', 4 * n_embd): null is not mapped to 4H",
        "GPT-2's config.json writes \"n_inner\": null (GPT2MLP: 4 * hidden_size when None)",
        ("gpt2",), NInnerNullNotMapped(), "NoneType",
    ),
    _config_mutant(
        "n_inner_ignored",
        "GPT-2's MLP hard-coded to 4 * n_embd, ignoring an explicit n_inner",
        "GPT-2 ports that assume the 4x MLP of the released checkpoints",
        ("gpt2",), NInnerIgnored(), "mlp.c_fc",
    ),
    _config_mutant(
        "head_dim_from_hidden_size",
        "head_dim derived as hidden_size // num_attention_heads, ignoring config.json's head_dim",
        "Mistral-NeMo (head_dim 128 != 5120 / 32) in loaders that derive head_dim",
        ("llama", "qwen3_moe"), HeadDimFromHidden(), "self_attn.",
    ),
    _config_mutant(
        "head_dim_required",
        "config['head_dim'] read unconditionally: a Llama config that leaves it out fails",
        "LlamaConfig derives head_dim when absent (older Llama configs never write it)",
        ("llama",), HeadDimRequired(), "KeyError: 'head_dim'",
    ),
    Mutant(
        "pp_layer_prefix_without_dot",
        "the PP skip matches f'model.layers.{i}' without the trailing dot: layer 1 of another "
        "rank matches layer 10 of this one",
        "vLLM's PP missing-layer prefixes end in '.' for this reason (is_pp_missing_parameter)",
        "all_ranks",
        ("llama",),
        MutantLoader("pp_layer_prefix_without_dot", {"llama": LlamaPPPrefixWithoutDot}),
        "model.layers.1",
    ),
    Mutant(
        "expert_id_one_digit",
        "the expert id parsed from the checkpoint name with one digit: expert 12 loads as expert 1",
        "regex expert-id parsing in engine loaders (experts\\.(\\d) without + or the dot)",
        "roundtrip",
        ("qwen3_moe",),
        MutantLoader("expert_id_one_digit", {"qwen3_moe": ExpertIdOneDigit}),
        "experts.1",
    ),
]
