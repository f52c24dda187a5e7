"""weightcheck: property-based conformance tests for the weight loaders of LLM inference engines.

What a loader adapter needs is importable from here::

    from weightcheck import Arch, Placement, Checkpoint, LoadReport, Capabilities, MoE, LoRA, Quant, MLA

The names are resolved on first use: the pytest plugin is loaded by every pytest run wherever
weightcheck is installed, and must not make those runs import torch.
"""

from importlib import import_module

_EXPORTS = {
    "Arch": "weightcheck.arch",
    "Placement": "weightcheck.arch",
    "MoE": "weightcheck.arch",
    "LoRA": "weightcheck.arch",
    "Quant": "weightcheck.arch",
    "MLA": "weightcheck.arch",
    "hf_config": "weightcheck.reference_models.families",
    "Checkpoint": "weightcheck.fixtures.checkpoint",
    "Capabilities": "weightcheck.conformance.protocol",
    "FAMILIES": "weightcheck.conformance.protocol",
    "FEATURES": "weightcheck.conformance.protocol",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'weightcheck' has no attribute {name!r}")
