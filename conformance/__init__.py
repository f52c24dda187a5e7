"""weightcheck's conformance properties and pytest plugin.

The public protocol types are importable from here::

    from weightcheck.conformance import Arch, Placement, Checkpoint, Capabilities, MoE, LoRA, Quant, MLA

They are imported on first use: the plugin is loaded by every pytest run wherever weightcheck
is installed, and must not make those runs import torch.
"""

from importlib import import_module

_EXPORTS = {
    "Arch": "weightcheck.reference_models.arch",
    "Placement": "weightcheck.reference_models.arch",
    "MoE": "weightcheck.reference_models.arch",
    "LoRA": "weightcheck.reference_models.arch",
    "Quant": "weightcheck.reference_models.arch",
    "MLA": "weightcheck.reference_models.arch",
    "Checkpoint": "weightcheck.fixtures.checkpoint",
    "Capabilities": "weightcheck.conformance.protocol",
    "FAMILIES": "weightcheck.conformance.protocol",
    "FEATURES": "weightcheck.conformance.protocol",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'conformance' has no attribute {name!r}")
