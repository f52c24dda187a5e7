"""weightcheck's conformance properties and pytest plugin.

The public protocol types are importable from here::

    from conformance import Arch, Placement, Checkpoint, Capabilities, MoE, LoRA, Quant, MLA

They are imported on first use: the plugin is loaded by every pytest run wherever weightcheck
is installed, and must not make those runs import torch.
"""

from importlib import import_module

_EXPORTS = {
    "Arch": "reference_models.arch",
    "Placement": "reference_models.arch",
    "MoE": "reference_models.arch",
    "LoRA": "reference_models.arch",
    "Quant": "reference_models.arch",
    "MLA": "reference_models.arch",
    "Checkpoint": "fixtures.checkpoint",
    "Capabilities": "conformance.protocol",
    "FAMILIES": "conformance.protocol",
    "FEATURES": "conformance.protocol",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'conformance' has no attribute {name!r}")
