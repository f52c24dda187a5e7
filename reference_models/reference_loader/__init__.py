"""weightcheck's own loader, in vLLM's style; ``--loader=weightcheck.reference_models.reference_loader``."""

from weightcheck.reference_models.reference_loader.loader import ReferenceLoader, loader

__all__ = ["ReferenceLoader", "loader"]
