"""weightcheck's own loader, in vLLM's style; ``--loader=reference_models.reference_loader``."""

from reference_models.reference_loader.loader import ReferenceLoader, loader

__all__ = ["ReferenceLoader", "loader"]
