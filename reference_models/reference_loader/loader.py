"""The reference loader as the suite sees it: the protocol object ``--loader`` names.

It is an independent implementation of docs/runtime-layout.md, deliberately sharing no mapping
code with the oracle, so that the two can only agree when both read the document the same way.

``load`` calls the model's ``load_weights`` once per checkpoint file (index order, each file in
its stored order), as a loader that re-enters per file does; the calls share one shard record
(``load_session``), so state a model keeps between calls is really exercised.  Optional hooks:
``check_loaded`` (vLLM's ``track_weights_loading`` without any exemption),
``process_weights_after_loading`` and ``linear_forward``.
"""

from __future__ import annotations


import json
from pathlib import Path

import torch
from torch import nn

from weightcheck.capabilities import FEATURES, PROMISES, Capabilities
from weightcheck.arch import Arch, Placement
from weightcheck.checkpoint import INDEX_FILE, stored_order
from weightcheck.families import FAMILIES, resolve
from weightcheck.reference_models.reference_loader.lora import LoRAWrapper
from weightcheck.reference_models.reference_loader.tracking import load_session


def model_class(family: str) -> type[nn.Module]:
    """The model class the family registry (``weightcheck.families``) names for ``family``."""
    try:
        return resolve(FAMILIES[family].reference_model)
    except KeyError:
        raise ValueError(
            f"the reference loader has no model for family {family!r}; known: {sorted(FAMILIES)}"
        ) from None


def check_index(path: Path) -> None:
    """``model.safetensors.index.json`` must say where every tensor is: each key it maps is in
    that file, and each file it names holds only keys mapped to it.  A checkpoint whose index
    lies (or a key stored in two shards) is ambiguous: refused, naming the key."""
    index = Path(path) / INDEX_FILE
    if not index.exists():
        return
    weight_map = json.loads(index.read_text())["weight_map"]
    for file in sorted(set(weight_map.values())):
        held = stored_order(Path(path) / file)
        for name in held:
            if weight_map.get(name) != file:
                raise ValueError(
                    f"checkpoint tensor {name!r} is stored in {file}, but the index maps it to "
                    f"{weight_map.get(name)!r}"
                )
        for name in sorted(set(k for k, v in weight_map.items() if v == file) - set(held)):
            raise ValueError(f"the index maps checkpoint tensor {name!r} to {file}, which does not hold it")


class ReferenceLoader:
    name = "weightcheck reference loader"
    # everything, and the promise that a reload into a processed model keeps the storage
    capabilities = Capabilities(features=FEATURES + PROMISES)

    def build(self, arch: Arch, placement: Placement) -> torch.nn.Module:
        return model_class(arch.family)(arch, placement)

    def load(self, model: torch.nn.Module, checkpoint) -> set[str]:
        """One ``load_weights`` call per group of the stream (per file, or wherever the
        checkpoint splits it), as vLLM re-enters per run of names; the union of what they report
        (a parameter is reported once all its pieces arrived, in whichever calls).  The index
        must agree with the files it names, or nothing is loaded."""
        check_index(checkpoint.path)
        loaded: set[str] = set()
        with load_session(model):
            for group in checkpoint.weight_groups():
                loaded |= set(model.load_weights(group))
        return loaded

    def state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The base weights of this rank: LoRA A/B are buffers, so never listed here."""
        return dict(model.named_parameters())

    # -- optional hooks ------------------------------------------------------------------------

    def check_loaded(self, model: torch.nn.Module, loaded) -> None:
        """Raise when a runtime parameter of this rank was not initialised from the checkpoint.

        vLLM's ``track_weights_loading``, with no exemption: a scale or bias of an FP8 module is
        checked like any other parameter (vLLM PR #41086 exempted whole quantised modules)."""
        missing = sorted(set(dict(model.named_parameters())) - set(loaded))
        if missing:
            raise ValueError(f"Following weights were not initialized from checkpoint: {missing}")

    def process_weights_after_loading(self, model: torch.nn.Module) -> None:
        """vLLM-like post-processing for inference: each layer that has it repacks itself (FP8
        per-tensor fused layers requantised to one scale; everything else unchanged)."""
        for module in list(model.modules()):
            if module is model:
                continue
            process = getattr(module, "process_weights_after_loading", None)
            if callable(process):
                process()

    def linear_forward(self, model: torch.nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
        """This rank's linear layer ``name`` applied to ``x`` ``[B, K_local]`` in float32 from the
        dequantised weight (+ bias); the LoRA delta is zero, so a wrapper applies its base."""
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{name!r} is no module of this model") from None
        if isinstance(module, LoRAWrapper):
            module = module.base_layer
        forward = getattr(module, "forward_float", None)
        if forward is not None:
            return forward(x)
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() == 2:  # embeddings, lm_head
            return x.float() @ weight.data.float().to(x.device).t()
        raise ValueError(f"{name!r} is not a linear layer")


loader = ReferenceLoader()
