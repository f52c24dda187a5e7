"""The suite against Hugging Face transformers 5.x (CPU): ``--loader=weightcheck.adapters.transformers_loader``.

Install transformers and PEFT outside the main environment with
``ci/adapters/install_transformers.sh`` and put that directory on ``PYTHONPATH``
(``ci/adapters/run_transformers.sh`` does both).

What is transformers' own and what is this adapter's:

- ``load`` is ``AutoModelForCausalLM.from_pretrained(checkpoint.path, output_loading_info=True,
  dtype=...)``: transformers reads the directory (config.json, index, safetensors), converts the
  names (v5 stacks per-expert MoE tensors into ``mlp.experts.gate_up_proj``/``down_proj``) and
  reports ``missing_keys``/``mismatched_keys`` in runtime naming.  The tracked set is the model's
  parameters minus those two, mapped to the canonical names (a fused canonical parameter counts
  only if every runtime parameter it is made of was loaded).  Nothing else decides it.
- transformers has no public way to load a checkpoint into a model that already exists, so
  ``build`` only records the arch and ``load`` creates the model; a second ``load`` replaces it
  with a model loaded from the second checkpoint.
- LoRA (``arch.lora``): the model ``from_pretrained`` returned is wrapped with PEFT
  (``get_peft_model``), PEFT's documented order (load, then wrap).  The base weights and their
  ``base_layer`` names are read back from the wrapped model.
- ``state`` asks transformers for the checkpoint naming of the live parameters
  (``revert_weight_conversion``, what ``save_pretrained`` uses) and maps that to the canonical
  vLLM-style layout of docs/runtime-layout.md with this module's own code: q/k/v and gate/up
  fused, GPT-2 Conv1D transposed, vocabulary padded with zero rows to a multiple of 64, MoE experts
  stacked into ``w13_weight``/``w2_weight``.

Only one rank (tp = pp = ep = 1): transformers on CPU has no tensor or expert parallelism, and
pipeline parallelism needs ``DistributedConfig`` under several processes (not supported here).
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_DEACTIVATE_ASYNC_LOAD", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.core_model_loading import revert_weight_conversion  # noqa: E402

from weightcheck import Capabilities  # noqa: E402

# weightcheck.checkpoint, not weightcheck: the package's lazy exports do not list LoadReport
# (its docstring says they do).
from weightcheck.checkpoint import Checkpoint, LoadReport  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

VOCAB_PADDING = 64
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GPT2_CONV1D = re.compile(r"^transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
VOCAB_PARAMS = ("model.embed_tokens.weight", "transformer.wte.weight", "lm_head.weight")

# PEFT targets for each LoRA target kind of arch.LoRA: module names (suffixes) and parameters.
LORA_MODULES = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
    "experts": (),
}
LORA_PARAMETERS = {"experts": ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")}


# --------------------------------------------------------------------------------------------
# Naming: HF names -> canonical names (docs/runtime-layout.md).  One rank, tp = 1.

_QKV = re.compile(r"^(?P<prefix>.*\.self_attn\.)(?P<which>[qkv])_proj\.(?P<kind>weight|bias)$")
_GATE_UP = re.compile(r"^(?P<prefix>.*\.mlp\.(?:shared_expert\.)?)(?P<which>gate|up)_proj\.weight$")
_EXPERT = re.compile(
    r"^(?P<prefix>.*\.mlp\.experts\.)(?P<expert>\d+)\.(?P<which>gate|up|down)_proj\.weight$"
)
_FUSED_EXPERTS = re.compile(r"^(?P<prefix>.*\.mlp\.experts\.)(?P<which>gate_up_proj|down_proj)$")
# DeepSeek-V3.2: transformers keeps the MLA down-projections and the indexer's wk/weights_proj
# apart; the canonical layout stacks each pair on rows (docs/runtime-layout.md, deepseek_v32).
_MLA_A = re.compile(r"^(?P<prefix>.*\.self_attn\.)(?P<which>q_a_proj|kv_a_proj_with_mqa)\.weight$")
_INDEXER_WK = re.compile(r"^(?P<prefix>.*\.self_attn\.indexer\.)(?P<which>wk|weights_proj)\.weight$")


HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Piece:
    """Where one HF tensor goes: canonical parameter ``target``, at ``slot`` (sort key)."""

    target: str
    slot: tuple = ()
    transpose: bool = False


def piece(name: str) -> Piece:
    """Where the HF tensor ``name`` goes in the canonical layout.

    Valid for both HF namings: transformers' runtime names (v5: fused 3-D experts) and the
    checkpoint names ``revert_weight_conversion`` gives back (per-expert or fused, as loaded).
    """
    if m := _QKV.match(name):
        return Piece(f"{m['prefix']}qkv_proj.{m['kind']}", ("qkv".index(m["which"]),))
    if m := _MLA_A.match(name):
        return Piece(f"{m['prefix']}fused_qkv_a_proj.weight", (m["which"] != "q_a_proj",))
    if m := _INDEXER_WK.match(name):
        return Piece(f"{m['prefix']}wk_weights_proj.weight", (m["which"] != "wk",))
    if m := _EXPERT.match(name):
        e = int(m["expert"])
        if m["which"] == "down":
            return Piece(f"{m['prefix']}w2_weight", (e,))
        return Piece(f"{m['prefix']}w13_weight", (e, ("gate", "up").index(m["which"])))
    if m := _FUSED_EXPERTS.match(name):
        target = "w13_weight" if m["which"] == "gate_up_proj" else "w2_weight"
        return Piece(f"{m['prefix']}{target}")
    if m := _GATE_UP.match(name):
        return Piece(f"{m['prefix']}gate_up_proj.weight", (("gate", "up").index(m["which"]),))
    if GPT2_CONV1D.match(name):
        return Piece(name, transpose=True)
    return Piece(name)


def canonical_name(name: str) -> str:
    """The canonical runtime name of the HF parameter ``name`` (runtime or checkpoint naming)."""
    return piece(name).target


def padded_vocab(vocab_size: int, tp_size: int = 1) -> int:
    step = VOCAB_PADDING
    while step % tp_size:
        step += VOCAB_PADDING
    return -(-vocab_size // step) * step


def _assemble(target: str, parts: list[tuple[tuple, torch.Tensor]]) -> torch.Tensor:
    """Join the pieces of one canonical parameter (already transposed where needed)."""
    parts = sorted(parts, key=lambda p: p[0])
    slots = [s for s, _ in parts]
    if len(parts) == 1 and slots[0] == ():
        return parts[0][1]
    if target.endswith("w13_weight"):  # per expert: [gate_e | up_e], stacked over experts
        experts = sorted({s[0] for s in slots})
        if experts != list(range(len(experts))) or len(parts) != 2 * len(experts):
            raise ValueError(f"{target}: incomplete expert pieces {slots}")
        by = dict(parts)
        return torch.stack([torch.cat([by[(e, 0)], by[(e, 1)]], dim=0) for e in experts])
    if target.endswith("w2_weight"):
        if slots != [(e,) for e in range(len(parts))]:
            raise ValueError(f"{target}: incomplete expert pieces {slots}")
        return torch.stack([t for _, t in parts])
    expected = [(i,) for i in range(3 if ".qkv_proj." in target else 2)]
    slots = [tuple(int(x) for x in s) for s in slots]  # (False,)/(True,): the pairs above
    if slots != expected:
        raise ValueError(f"{target}: pieces {slots}, expected {expected}")
    return torch.cat([t for _, t in parts], dim=0)


def to_canonical(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF tensors (checkpoint naming) -> the canonical layout of one rank with tp = 1."""
    grouped: dict[str, list] = {}
    for name, tensor in tensors.items():
        p = piece(name)
        value = tensor.detach()
        if p.transpose:
            value = value.t()
        grouped.setdefault(p.target, []).append((p.slot, value))
    out = {}
    for target, parts in grouped.items():
        value = _assemble(target, parts).contiguous()
        if target in VOCAB_PARAMS:
            rows = padded_vocab(value.shape[0])
            pad = value.new_zeros((rows - value.shape[0], *value.shape[1:]))
            value = torch.cat([value, pad], dim=0)
        out[target] = value
    return out


def strip_base_layer(name: str) -> str:
    return re.sub(r"(\.base_layer)+\.", ".", name)


def is_lora_weight(name: str) -> bool:
    """PEFT's own tensors (``lora_A``, ``lora_B``, ...): never base weights."""
    return any(part.startswith("lora_") for part in name.split("."))


def with_base_layer(name: str) -> str:
    module, _, param = name.rpartition(".")
    return f"{module}.base_layer.{param}"


# --------------------------------------------------------------------------------------------
# The loader


@dataclass
class Model:
    """What ``build`` returns: the arch, and after ``load`` the transformers (or PEFT) model."""

    arch: Any
    placement: Any
    hf: Any = None  # the PreTrainedModel (LoRA-injected when arch.lora)
    peft: Any = None  # the PeftModel wrapping it, if any
    wrapped: set[str] = field(default_factory=set)  # canonical names under a LoRA base_layer


def features(environ=os.environ) -> set[str]:
    """The declared features.  FP8 block-wise is opt-in (``WEIGHTCHECK_TRANSFORMERS_FP8=1``):
    transformers 5.23 mishandles partial blocks, which the suite draws in most FP8 cases, so
    declaring it by default would turn every property of every FP8 family into a known failure
    and hide anything else; FP8 runs on its regression case files instead
    (ci/adapters/run_transformers_fp8.sh, docs/adapters/transformers.md)."""
    declared = {"tied_embeddings", "attention_bias", "lora", "sharded_checkpoint", "fused_expert_checkpoint"}
    if environ.get("WEIGHTCHECK_TRANSFORMERS_FP8") == "1":
        declared |= {"fp8_block", "fp8_dequantized_state"}
    return declared


class TransformersLoader:
    name = f"transformers {transformers.__version__}"
    capabilities = Capabilities(families={"llama", "gpt2", "qwen3_moe", "qwen2_moe", "deepseek_v32"}, features=features())
    # Shipped with the adapter and used by default (--no-adapter-defaults leaves them out):
    # the known failures, one-line reasons each, and the findings' regression cases.
    expectations = HERE / "expectations" / (
        "transformers-fp8.txt" if "fp8_block" in capabilities.features else "transformers.txt"
    )
    regressions = HERE / "regressions" / "transformers"

    def build(self, arch, placement) -> Model:
        if (placement.tp_size, placement.pp_size, placement.ep_size) != (1, 1, 1):
            raise NotImplementedError("transformers on CPU: tp, pp and ep sizes must be 1")
        if arch.lora is not None and arch.family == "gpt2":
            raise ValueError("LoRA wrapping is not defined for gpt2")
        return Model(arch, placement)

    def load(self, model: Model, checkpoint) -> LoadReport:
        with load_report() as report:
            try:
                hf, info = AutoModelForCausalLM.from_pretrained(
                    str(checkpoint.path),
                    output_loading_info=True,
                    dtype=DTYPES[model.arch.dtype],
                )
            except Exception as exc:
                if not report:
                    raise  # raised before transformers wrote its load report: as it is
                raise TransformersLoadError(exc, report, lora=model.arch.lora is not None) from exc
        hf.eval()
        not_loaded = set(info["missing_keys"]) | {_mismatched_name(k) for k in info["mismatched_keys"]}
        runtime = [n for n, _ in hf.named_parameters()]
        sources: dict[str, set[str]] = {}
        for n in runtime:
            sources.setdefault(canonical_name(n), set()).add(n)
        tracked = {c for c, names in sources.items() if not names & not_loaded}
        unexpected = checkpoint_names_of(info["unexpected_keys"], checkpoint.path, hf.base_model_prefix)
        model.hf, model.peft, model.wrapped = hf, None, set()
        if model.arch.lora is not None:
            self._wrap(model)
        loaded = {with_base_layer(c) if c in model.wrapped else c for c in tracked}
        return LoadReport(loaded=loaded, unexpected=unexpected)

    def _wrap(self, model: Model) -> None:
        from peft import LoraConfig, get_peft_model

        hf, lora = model.hf, model.arch.lora
        leaves = {n.rsplit(".", 1)[-1] for n, _ in hf.named_modules()}
        modules = sorted({m for t in lora.targets for m in LORA_MODULES[t] if m in leaves})
        params = sorted(
            {
                p
                for t in lora.targets
                for p in LORA_PARAMETERS.get(t, ())
                if any(n.endswith("." + p) for n, _ in hf.named_parameters())
            }
        )
        if not modules and not params:
            return  # nothing of this arch is a target: the model stays unwrapped
        config = LoraConfig(
            r=lora.rank, lora_alpha=lora.rank, target_modules=modules, target_parameters=params or None
        )
        model.peft = get_peft_model(hf, config)
        model.hf = model.peft.get_base_model()
        model.wrapped = {
            canonical_name(strip_base_layer(n))
            for n, _ in model.hf.named_parameters()
            if ".base_layer." in n and not is_lora_weight(n)
        }

    def state(self, model: Model) -> dict[str, torch.Tensor]:
        if model.hf is None:
            return {}
        params = {
            strip_base_layer(n): p
            for n, p in model.hf.named_parameters()
            if not is_lora_weight(n)
        }
        checkpoint_named = _revert_without_fp8(model.hf, params)
        out = to_canonical(checkpoint_named)
        return {with_base_layer(c) if c in model.wrapped else c: v for c, v in out.items()}


# --------------------------------------------------------------------------------------------
# What transformers reports: its unexpected keys in checkpoint naming, and its load report.


def checkpoint_names_of(unexpected, path, prefix: str = "model") -> frozenset[str]:
    """transformers' ``unexpected_keys`` as the checkpoint names they came from.

    A key transformers reports is a checkpoint name, or that name after its renaming: the
    base-model prefix added or removed, or per-expert tensors collected into their fused target
    (``mlp.experts.7.gate_proj.weight`` -> ``mlp.experts.gate_up_proj``).  Each is mapped back
    to the checkpoint tensors that became it; a key that matches none is kept as transformers
    wrote it.
    """
    unexpected = set(unexpected)
    if not unexpected:
        return frozenset()
    names = Checkpoint(path=Path(path), config={}).names()
    present = set(names)
    out: set[str] = set()
    for key in unexpected:
        if key in present:
            out.add(key)
            continue
        bare = key.removeprefix(prefix + ".")
        matched = {n for n in names if n in (bare, f"{prefix}.{key}")}
        if not matched:
            target = canonical_name(key)
            matched = {
                n for n in names if canonical_name(n) == target or canonical_name(f"{prefix}.{n}") == target
            }
        out |= matched or {key}
    return frozenset(out)


class _Records(logging.Handler):
    def __init__(self, into: list[str]):
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "LOAD REPORT" in message:
            self.into.append(_ANSI.sub("", message))


_ANSI = re.compile(r"\x1b?\[[0-9;]*m")
_DOTTED = re.compile(r"[A-Za-z_][\w]*(?:\.[\w]+)+")


@contextmanager
def load_report():
    """The LOAD REPORT ``from_pretrained`` logs (a warning of ``transformers.modeling_utils``):
    the keys it found missing, unexpected, mismatched or failing conversion, with details.

    transformers writes it before it raises on a conversion error or a size mismatch, and its
    exception says only "look at the above report"; this module silences transformers' logging
    (``set_verbosity_error``), so the report is collected here instead, for the duration of one
    ``from_pretrained``, and not printed.
    """
    log = logging.getLogger("transformers.modeling_utils")
    reports: list[str] = []
    handler = _Records(reports)
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    log.propagate = False
    try:
        yield reports
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


class TransformersLoadError(RuntimeError):
    """``from_pretrained`` raised after its load report: its exception, then the report it
    refers to ("look at the above report"), then the transformers parameter names the report
    gives translated to canonical names where they differ (``experts.gate_up_proj`` is
    ``experts.w13_weight``).  Nothing is added that transformers did not say."""

    def __init__(self, exc: BaseException, reports: list[str], lora: bool = False):
        report = "\n".join(_without_tracebacks(r) for r in reports)
        said = set(_DOTTED.findall(report))
        named = sorted({canonical_name(n) for n in said} - said)
        text = f"{type(exc).__name__}: {exc}\ntransformers' load report:\n{report}"
        if named:
            text += f"\n(in canonical naming: {', '.join(named)}"
            if lora:  # the model was to be LoRA-wrapped: the same parameters under base_layer
                text += f"; LoRA-wrapped: {', '.join(with_base_layer(n) for n in named)}"
            text += ")"
        super().__init__(text)


def _without_tracebacks(report: str) -> str:
    """The report, compact: without the Python tracebacks of conversion errors (the error
    itself and transformers' one-line summary stay), the table's padding and blank lines."""
    out, skipping = [], False
    for line in report.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            skipping = True
            continue
        if skipping and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        skipping = False
        line = re.sub(r"-{4,}", "---", re.sub(r" {2,}", " ", line)).rstrip()
        if line and (not out or line != out[-1]):
            out.append(line)
    return "\n".join(out)


def _without_fp8_dequantize(conversions: list) -> list:
    """The model's load conversions without transformers' FP8 dequantisation.

    Loading an FP8 checkpoint on CPU prepends ``Fp8Dequantize`` to the converters (and adds a
    catch-all ``weight, weight_scale_inv, activation_scale -> weight`` one); its reverse,
    ``Fp8Quantize``, re-quantises on save, even the embedding and ``lm_head``.  The runtime state
    is the dequantised weights as they live in the model, so ``state`` reverts only the naming:
    the catch-all is dropped, and the others lose the dequantise op and the scale sources.
    """
    from transformers.core_model_loading import WeightConverter
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    out = []
    for conv in conversions:
        ops = list(getattr(conv, "operations", ()))
        if not isinstance(conv, WeightConverter) or not any(isinstance(o, Fp8Dequantize) for o in ops):
            out.append(conv)
            continue
        ops = [o for o in ops if not isinstance(o, Fp8Dequantize)]
        sources = [
            s
            for s in conv._original_source_patterns
            if not s.endswith(("weight_scale_inv", "activation_scale"))
        ]
        if ops and sources != list(conv._original_target_patterns):
            out.append(conv.copy(sources, list(conv._original_target_patterns), operations=ops))
    return out


def _revert_without_fp8(hf, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``revert_weight_conversion`` (checkpoint naming) without re-quantising FP8 weights."""
    conversions = getattr(hf, "_weight_conversions", None)
    if not conversions:
        return revert_weight_conversion(hf, params)
    hf._weight_conversions = _without_fp8_dequantize(conversions)
    try:
        return revert_weight_conversion(hf, params)
    finally:
        hf._weight_conversions = conversions


def _mismatched_name(entry) -> str:
    """``mismatched_keys`` entries are names, or (name, checkpoint shape, model shape) tuples."""
    return entry[0] if isinstance(entry, (tuple, list)) else entry


loader = TransformersLoader()
