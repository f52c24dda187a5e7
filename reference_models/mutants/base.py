"""What every mutant is: a reference loader with one real bug put back, and where it was seen."""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable

from torch import nn

from weightcheck.reference_models.reference_loader.loader import (
    ReferenceLoader,
    model_class,
)


@dataclass(frozen=True)
class Mutant:
    name: str
    bug: str
    origin: str
    caught_by: str  # the property expected to catch it
    families: tuple[str, ...]
    loader: object
    message: str  # a fragment the failure message must contain


class MutantLoader(ReferenceLoader):
    """The reference loader with other model classes and/or a patch applied after building."""

    def __init__(self, name, models=None, patch: Callable[[nn.Module], None] | None = None):
        self.name = f"mutant {name}"
        self.models = models or {}
        self.patch = patch

    def build(self, arch, placement):
        model = self.models.get(arch.family, model_class(arch.family))(arch, placement)
        if self.patch:
            self.patch(model)
        return model


def patch_modules(kind: type, method: str, replacement: Callable) -> Callable[[nn.Module], None]:
    """Rebind ``method`` on every ``kind`` instance of one model (never on the class)."""

    def patch(model: nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, kind):
                setattr(module, method, types.MethodType(replacement, module))

    return patch
